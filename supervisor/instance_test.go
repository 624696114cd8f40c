package supervisor

import (
	"io"
	"log"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/config"
)

func TestRunDirLock(t *testing.T) {
	dir := t.TempDir()
	first, err := lockRunDir(dir, []string{"pid 1234", "config /srv/a/berth.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		release bool
		want    string // "" = the lock is taken
	}{
		{"held: refused, naming the holder", false, "is in use by another berth (pid 1234, config /srv/a/berth.yaml); each berth needs a run directory of its own: set BERTH_RUN_DIR"},
		{"released: taken", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.release {
				first.Close()
			}
			f, err := lockRunDir(dir, []string{"pid 99"})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("lock after release: %v", err)
				}
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatal("a second lock of a held run directory succeeded")
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks the directory or %q", err, tc.want)
			}
		})
	}
}

// A second supervisor on the run directory of a running one stops at boot,
// before it removes or writes anything there.
func TestSecondSupervisorOnTheSameRunDirIsRefused(t *testing.T) {
	h := newHarness(t, nil)
	notify := h.s.runDir + "/notify.sock"
	before, err := os.Stat(notify)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Admin.Listen = "off"
	s2, err := newSupervisor(Options{Config: cfg, RunDir: h.s.runDir, OS: newFakeOS(), CgroupRoot: "off", Log: log.New(io.Discard, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	err = s2.boot()
	if err == nil {
		s2.closeAll()
		t.Fatal("second supervisor booted on a run directory in use")
	}
	if want := "is in use by another berth (pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q lacks %q", err, want)
	}
	after, err := os.Stat(notify)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the first supervisor's notify socket was replaced or removed: %v", err)
	}
}
