package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/supervisor"
)

// printCompanions adds the before-start tasks, companion programs and
// periodic jobs to `berth status`; nothing when none is configured.
func printCompanions(w io.Writer, st supervisor.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(st.Tasks) > 0 {
		fmt.Fprintln(tw, "\nTASK\tPHASE\tSTATE\tTOOK\tEXIT")
		for _, t := range st.Tasks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, t.Phase, t.State, secs(t.Duration), dash(t.Exit))
		}
	}
	if len(st.Programs) > 0 {
		fmt.Fprintln(tw, "\nPROGRAM\tPID\tSTATE\tUPTIME\tRESTARTS\tLAST EXIT")
		for _, p := range st.Programs {
			state := p.State
			if p.CrashLoop {
				state += fmt.Sprintf(" (crash loop: %d failures in a row)", p.Failures)
			}
			if p.Required {
				state += " required"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", p.Name, p.PID, state, secs(p.UptimeSec), p.Restarts, dash(p.LastExit))
		}
	}
	if len(st.Cron) > 0 {
		fmt.Fprintln(tw, "\nJOB\tSCHEDULE\tRUNS\tFAILED\tSKIPPED\tLAST START\tLAST EXIT\tNEXT")
		for _, j := range st.Cron {
			last := "-"
			if j.LastStart != nil {
				last = time.Since(*j.LastStart).Round(time.Second).String() + " ago"
			}
			if j.Running {
				last += fmt.Sprintf(" (running, pid %d)", j.PID)
			}
			next := "in " + time.Until(j.NextRun).Round(time.Second).String()
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", j.Name, j.Schedule, j.Runs, j.Failed, j.Skipped, last, dash(j.LastExit), next)
		}
	}
	tw.Flush()
}

func secs(s float64) string {
	if s == 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
