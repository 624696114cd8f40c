package main

import (
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/acme"
	"github.com/berth-dev/berth/supervisor"
)

func TestPrintTLS(t *testing.T) {
	now := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	st := supervisor.Status{TLS: &supervisor.TLSStatus{ACME: []acme.DomainStatus{
		{Domain: "example.com", NotAfter: now.Add(60 * 24 * time.Hour), NextRenewal: now.Add(30 * 24 * time.Hour), Issuer: "R11"},
		{Domain: "www.example.com", LastError: "dial tcp: connection refused (the CA cannot be reached)", LastErrorAt: now.Add(-2 * time.Minute)},
		{Domain: "old.example.com", NotAfter: now.Add(-time.Hour)},
	}}}
	var b strings.Builder
	printTLS(&b, st, now)
	for _, want := range []string{
		"tls  example.com      valid until 2027-03-02 12:00 (renews about 2027-01-31 12:00, R11)",
		"tls  www.example.com  NO CERTIFICATE — last error 2m0s ago: dial tcp: connection refused (the CA cannot be reached)",
		"tls  old.example.com  EXPIRED valid until 2027-01-01 11:00",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
	b.Reset()
	printTLS(&b, supervisor.Status{}, now)
	if b.Len() != 0 {
		t.Errorf("no tls.acme printed %q", b.String())
	}
}
