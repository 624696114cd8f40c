package supervisor

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the supervisor's own; the proxy's (requests, latency, queue)
// come from its /metrics socket and are appended by the admin handler.
type metrics struct {
	reg           *prometheus.Registry
	workers       *prometheus.GaugeVec
	restarts      *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	orphans       prometheus.Counter
	generation    prometheus.Gauge
	rolling       prometheus.Gauge
	ready         prometheus.Gauge
	readyDuration prometheus.Histogram
	memory        *prometheus.GaugeVec
	cpu           *prometheus.GaugeVec
	throttled     *prometheus.GaugeVec

	programUp        *prometheus.GaugeVec
	programRestarts  *prometheus.CounterVec
	programCrashLoop *prometheus.GaugeVec
	cronRuns         *prometheus.CounterVec
	cronLastStart    *prometheus.GaugeVec
	cronLastSuccess  *prometheus.GaugeVec
	cronLastDuration *prometheus.GaugeVec
	cronLastExit     *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		workers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_workers", Help: "Worker processes by state."}, []string{"state"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_restarts_total", Help: "Processes replaced, by cause (crash, signal, oom, timeout, max_requests, max_rss, reload, scale-down, proxy)."}, []string{"cause"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_reloads_total", Help: "Config and code reloads by result."}, []string{"result"}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_orphans_reaped_total", Help: "Processes reparented to berth and reaped."}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_config_generation", Help: "Applied configuration generation; 1 at start."}),
		rolling: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_reload_rolling", Help: "1 while a reload's new worker generation is rolling in (berth_config_generation counts it once it serves)."}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_ready", Help: "1 when the proxy serves and all workers are ready."}),
		readyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "berth_worker_start_seconds", Help: "Time from starting a worker to its READY=1.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		memory: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_memory_bytes", Help: "Memory in use by group (cgroup) or worker (RSS)."}, []string{"group"}),
		cpu: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cpu_seconds", Help: "CPU time used by cgroup group."}, []string{"group"}),
		throttled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cpu_throttled_seconds", Help: "Time throttled by the CPU quota, by cgroup group."}, []string{"group"}),

		programUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_program_up", Help: "1 while a companion program runs."}, []string{"program"}),
		programRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_program_restarts_total", Help: "Restarts of a companion program after it ended or could not start."}, []string{"program"}),
		programCrashLoop: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_program_crash_looping", Help: "1 while a companion program has failed 3 or more times in a row."}, []string{"program"}),
		cronRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_cron_runs_total", Help: "Periodic job runs by result (ok, failed, skipped: the previous run was still going)."}, []string{"job", "result"}),
		cronLastStart: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cron_last_start_timestamp_seconds", Help: "When a periodic job last started (Unix time)."}, []string{"job"}),
		cronLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cron_last_success_timestamp_seconds", Help: "When a periodic job last ended with exit code 0 (Unix time)."}, []string{"job"}),
		cronLastDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cron_last_duration_seconds", Help: "How long a periodic job's last run took."}, []string{"job"}),
		cronLastExit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cron_last_exit_code", Help: "A periodic job's last exit code (128+n for signal n)."}, []string{"job"}),
	}
	m.reg.MustRegister(m.programUp, m.programRestarts, m.programCrashLoop, m.cronRuns,
		m.cronLastStart, m.cronLastSuccess, m.cronLastDuration, m.cronLastExit)
	m.reg.MustRegister(m.workers, m.restarts, m.reloads, m.orphans, m.generation, m.rolling, m.ready,
		m.readyDuration, m.memory, m.cpu, m.throttled,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
