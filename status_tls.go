package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/supervisor"
)

// printTLS lists each tls.acme domain: the certificate in force, when it
// renews, and the last failed order, so "why is HTTPS broken" is one
// command away.
func printTLS(w io.Writer, st supervisor.Status, now time.Time) {
	if st.TLS == nil || len(st.TLS.ACME) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, d := range st.TLS.ACME {
		var line string
		if d.NotAfter.IsZero() {
			line = "NO CERTIFICATE"
			if d.LastError == "" {
				line += " yet: the first order is in progress"
			}
		} else {
			line = fmt.Sprintf("valid until %s", d.NotAfter.UTC().Format("2006-01-02 15:04"))
			if !d.NextRenewal.IsZero() {
				line += fmt.Sprintf(" (renews about %s, %s)", d.NextRenewal.UTC().Format("2006-01-02 15:04"), d.Issuer)
			}
			if now.After(d.NotAfter) {
				line = "EXPIRED " + line
			}
		}
		if d.LastError != "" {
			line += fmt.Sprintf(" — last error %s ago: %s", now.Sub(d.LastErrorAt).Round(time.Second), d.LastError)
		}
		fmt.Fprintf(tw, "tls\t%s\t%s\n", d.Domain, line)
	}
	tw.Flush()
}
