package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/supervisor"
)

// printUpstreams lists every upstream server as the serving proxy sees it.
func printUpstreams(w io.Writer, st supervisor.Status) {
	if len(st.Upstreams) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nUPSTREAM\tSERVER\tSTATE\tREQUESTS\tFAILURES\tIN-FLIGHT\tLATENCY")
	for _, name := range slices.Sorted(maps.Keys(st.Upstreams)) {
		for _, s := range st.Upstreams[name] {
			server := s.Server
			if s.Addr != "" && !strings.HasSuffix(s.Server, s.Addr) {
				server += " (" + s.Addr + ")"
			}
			lat := "-"
			if s.Latency > 0 {
				lat = (time.Duration(s.Latency) * time.Microsecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", name, server, s.State, s.Requests, s.Failures, s.InFlight, lat)
		}
	}
	tw.Flush()
}
