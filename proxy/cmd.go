package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/control"
)

// Main is the entry of `berth proxy`, started by the supervisor with:
//
//	BERTH_CONTROL_FD      the control socket's fd (3)
//	BERTH_LISTEN_FDS      how many listeners follow, from fd 4
//	BERTH_LISTEN_NAMES    their addresses, for messages
//	BERTH_LISTEN_TLS      "true" or "false" per listener: speak TLS on it
//	BERTH_UDP_FDS         how many UDP sockets follow the listeners (HTTP/3)
//	BERTH_QUIC_TAG        this proxy's QUIC connection ID tag (proxy/quicsteer)
//	BERTH_METRICS_SOCKET  unix socket path to serve /metrics on ("" = none)
//	BERTH_PROXY_ID        this proxy's generation, for messages
//
// It waits for the first config and workers messages, serves, sends ready,
// then applies later messages and forwards the server's events. SIGTERM or
// EOF on the control socket: graceful stop within graceful_timeout, exit 0.
// SIGINT/SIGQUIT: stop at once, exit 0. It returns the exit code.
func Main() int {
	elog := log.New(os.Stderr, "berth proxy: ", 0)
	id := os.Getenv("BERTH_PROXY_ID")
	if id != "" {
		elog.SetPrefix("berth proxy " + id + ": ")
	}
	fail := func(format string, args ...any) int {
		elog.Printf(format, args...)
		return 1
	}
	// The live heap is small (pooled buffers, a few maps) and the garbage
	// is per request: collecting 4x less often costs a few MB and saves
	// GC CPU on the hot path. GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// Broken pipes are errors to handle, not a reason to die; reloads come
	// as control messages, so SIGHUP (from a terminal) is ignored too.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)

	ctrlFD, err := envInt("BERTH_CONTROL_FD", -1)
	if err != nil || ctrlFD < 0 {
		return fail("BERTH_CONTROL_FD is not set or bad (%v): `berth proxy` is started by `berth run`, not by hand", err)
	}
	cf := os.NewFile(uintptr(ctrlFD), "control")
	cc, err := net.FileConn(cf)
	cf.Close()
	if err != nil {
		return fail("control socket fd %d: %v", ctrlFD, err)
	}
	defer cc.Close()
	conn := control.NewConn(cc)

	nl, err := envInt("BERTH_LISTEN_FDS", 0)
	if err != nil || nl < 0 {
		return fail("BERTH_LISTEN_FDS: %v", err)
	}
	names := os.Getenv("BERTH_LISTEN_NAMES")
	tlsFlags := strings.Split(os.Getenv("BERTH_LISTEN_TLS"), ",")
	var listeners []net.Listener
	for i := 0; i < nl; i++ {
		f := os.NewFile(uintptr(4+i), fmt.Sprintf("listener-%d", i))
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail("listener fd %d (of %q): %v", 4+i, names, err)
		}
		listeners = append(listeners, l)
	}
	// HTTP/3: the UDP sockets of the https:// listeners' ports, this
	// proxy's own in each port's reuseport group.
	nu, err := envInt("BERTH_UDP_FDS", 0)
	if err != nil || nu < 0 {
		return fail("BERTH_UDP_FDS: %v", err)
	}
	quicTag, err := envInt("BERTH_QUIC_TAG", 0)
	if err != nil || quicTag < 0 || quicTag > 255 {
		return fail("BERTH_QUIC_TAG: %v", err)
	}
	var udps []net.PacketConn
	for i := 0; i < nu; i++ {
		f := os.NewFile(uintptr(4+nl+i), fmt.Sprintf("udp-%d", i))
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err != nil {
			return fail("udp socket fd %d: %v", 4+nl+i, err)
		}
		udps = append(udps, pc)
	}

	srv := New(Options{ErrorLog: os.Stderr})
	srv.elog.SetPrefix(elog.Prefix())
	srv.SetACMEListeners(acmeAddrs(listeners, tlsFlags))

	in := make(chan control.Message)
	ended := make(chan error, 1)
	go receive(conn, in, ended, elog)

	// Phase 1: the first config, then the first worker set.
	var cfg *control.Proxy
	gotWorkers := false
	for cfg == nil || !gotWorkers {
		select {
		case m := <-in:
			switch m.Type {
			case control.TypeConfig:
				if m.Config == nil {
					return fail("control: config message without config")
				}
				if err := srv.SetConfig(*m.Config); err != nil {
					return fail("first config refused: %v", err)
				}
				cfg = m.Config
			case control.TypeWorkers:
				if err := srv.SetWorkers(m.Workers); err != nil {
					elog.Printf("workers: %v", err)
				}
				gotWorkers = true
			default:
				elog.Printf("control: unexpected %q message before config; ignored", m.Type)
			}
		case err := <-ended:
			return fail("control socket closed before the first config: %v", err)
		case <-sigs:
			return 0
		}
	}

	// Phase 2: serve.
	var metricsSrv *http.Server
	if path := os.Getenv("BERTH_METRICS_SOCKET"); path != "" {
		os.Remove(path)
		ml, err := net.Listen("unix", path)
		if err != nil {
			return fail("metrics socket: %v (check BERTH_RUN_DIR is writable)", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.MetricsHandler())
		mux.Handle("/cache/purge", srv.CacheHandler())
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: elog}
		go metricsSrv.Serve(ml)
		defer func() {
			metricsSrv.Close()
			os.Remove(path)
		}()
	}
	serveErr := make(chan error, len(listeners)+len(udps))
	for i, l := range listeners {
		serve := srv.Serve
		if i < len(tlsFlags) && tlsFlags[i] == "true" {
			serve = srv.ServeTLS
		}
		go func(l net.Listener) {
			if err := serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}(l)
	}
	for _, pc := range udps {
		go func(pc net.PacketConn) {
			if err := srv.ServeHTTP3(pc, byte(quicTag)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve http3 %s: %w", pc.LocalAddr(), err)
			}
		}(pc)
	}
	var fwd sync.WaitGroup
	fwd.Add(1)
	go func() {
		defer fwd.Done()
		failed := false
		for m := range srv.Events() {
			if err := conn.Send(m); err != nil && !failed {
				failed = true
				elog.Printf("%v (the supervisor is gone; events dropped)", err)
			}
		}
	}()
	if err := conn.Send(control.Message{Type: control.TypeReady}); err != nil {
		elog.Printf("%v", err)
	}

	// Phase 3: apply messages until told to stop.
	code := 0
	graceful := true
loop:
	for {
		select {
		case m := <-in:
			switch m.Type {
			case control.TypeConfig:
				if m.Config == nil {
					elog.Printf("control: config message without config; ignored")
					continue
				}
				if err := srv.SetConfig(*m.Config); err != nil {
					elog.Printf("config refused, the previous one stays: %v", err)
					continue
				}
				cfg = m.Config
			case control.TypeWorkers:
				if err := srv.SetWorkers(m.Workers); err != nil {
					elog.Printf("workers: %v", err)
				}
			default:
				elog.Printf("control: unexpected %q message; ignored", m.Type)
			}
		case <-ended:
			break loop // the supervisor is gone: stop as on SIGTERM
		case sig := <-sigs:
			graceful = sig == syscall.SIGTERM
			break loop
		case err := <-serveErr:
			elog.Printf("%v", err)
			code = 1
			break loop
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.GracefulTimeout))
	if !graceful {
		cancel()
	}
	go func() {
		// A fast-stop signal during a graceful stop cuts it short.
		for sig := range sigs {
			if sig != syscall.SIGTERM {
				cancel()
			}
		}
	}()
	if err := srv.Shutdown(ctx); err != nil && graceful {
		elog.Printf("graceful stop: requests still running after graceful_timeout (%s) were cut", time.Duration(cfg.GracefulTimeout))
	}
	cancel()
	fwd.Wait()
	return code
}

// receive reads control messages until EOF or a broken socket. A line that
// does not decode is reported and skipped.
func receive(conn *control.Conn, in chan<- control.Message, ended chan<- error, elog *log.Logger) {
	skipped := 0
	for {
		m, err := conn.Receive()
		if err == nil {
			skipped = 0
			in <- m
			continue
		}
		var oe *net.OpError
		var errno syscall.Errno
		fatal := errors.Is(err, io.EOF) || errors.Is(err, bufio.ErrTooLong) || errors.Is(err, net.ErrClosed) ||
			errors.As(err, &oe) || errors.As(err, &errno)
		// Read errors are sticky; the bound stops a loop on one not listed.
		if skipped++; !fatal && skipped < 100 {
			elog.Printf("%v; message skipped", err)
			continue
		}
		// net.ErrClosed: Main closed the socket on its way out.
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			elog.Printf("%v", err)
		}
		ended <- err
		return
	}
}

func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w", name, v, err)
	}
	return n, nil
}

// acmeAddrs are the first plain and the first TLS TCP listener, where the
// CA's HTTP-01 and TLS-ALPN-01 validations arrive; "" for none.
func acmeAddrs(ls []net.Listener, tlsFlags []string) (plain, secure string) {
	for i, l := range ls {
		if l.Addr().Network() != "tcp" {
			continue
		}
		if i < len(tlsFlags) && tlsFlags[i] == "true" {
			if secure == "" {
				secure = l.Addr().String()
			}
		} else if plain == "" {
			plain = l.Addr().String()
		}
	}
	return plain, secure
}
