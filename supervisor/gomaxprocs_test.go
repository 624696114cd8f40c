package supervisor

import (
	"slices"
	"strings"
	"testing"
)

func TestProxyProcs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		operator string
		usable   int
		quota    float64
		quotaOK  bool
		want     string
	}{
		{"operator's value wins over a quota", "3", 8, 2, true, "3"},
		{"no quota, 2 CPUs", "", 2, 0, false, "1"},
		{"no quota, 16 CPUs", "", 16, 0, false, "4"},
		{"quota of 2 on 8 CPUs: a quarter of the quota", "", 8, 2, true, "1"},
		{"quota of 6 on 8 CPUs", "", 8, 6, true, "2"},
		{"quota above the CPUs counts the CPUs", "", 4, 12, true, "1"},
		{"half a CPU still gets one P", "", 2, 0.5, true, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := proxyProcs(tc.operator, tc.usable, tc.quota, tc.quotaOK); got != tc.want {
				t.Fatalf("proxyProcs(%q, %d, %v, %v) = %s, want %s", tc.operator, tc.usable, tc.quota, tc.quotaOK, got, tc.want)
			}
		})
	}
}

// The operator's GOMAXPROCS, present when berth starts, reaches the proxy
// unchanged.
func TestProxyGetsTheOperatorsGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "3")
	h := newHarness(t, nil)
	h.ready("1.1")
	pids := h.os.startsOf("proxy")
	if len(pids) == 0 {
		t.Fatal("no proxy started")
	}
	for i, pid := range h.os.pids {
		if pid == pids[0] && !slices.Contains(h.os.started[i].Env, "GOMAXPROCS=3") {
			t.Fatalf("proxy env lacks GOMAXPROCS=3:\n%s", strings.Join(h.os.started[i].Env, "\n"))
		}
	}
}
