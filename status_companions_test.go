package main

import (
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/supervisor"
)

func TestPrintCompanions(t *testing.T) {
	now := time.Now()
	code := 1
	cases := []struct {
		name string
		st   supervisor.Status
		want []string
	}{
		{"none configured", supervisor.Status{}, nil},
		{"all three", supervisor.Status{
			Tasks:    []supervisor.TaskStatus{{Name: "migrate", Phase: "before-start", State: "done", Duration: 1.5, Exit: "exit code 0"}},
			Programs: []supervisor.ProgramStatus{{Name: "celery", PID: 42, State: "running", Restarts: 3, Failures: 3, CrashLoop: true, Required: true}},
			Cron:     []supervisor.JobStatus{{Name: "clear", Schedule: "@every 2s", Runs: 5, Skipped: 1, LastStart: &now, LastExit: "exit code 1", LastExitCode: &code, NextRun: now.Add(2 * time.Second)}},
		}, []string{"TASK", "migrate", "before-start", "done", "1.5s", "PROGRAM", "celery", "42", "crash loop: 3 failures in a row", "required", "JOB", "clear", "@every 2s", "exit code 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b strings.Builder
			printCompanions(&b, c.st)
			if c.want == nil && b.Len() != 0 {
				t.Fatalf("printed %q for no companions", b.String())
			}
			for _, w := range c.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}
