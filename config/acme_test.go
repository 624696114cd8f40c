package config

import (
	"testing"

	"github.com/berth-dev/berth/acme"
)

// TestACMEDefaults: config names package acme's defaults without importing
// certmagic into every config user; they must not drift apart.
func TestACMEDefaults(t *testing.T) {
	if DefaultACMECA != acme.DefaultCA {
		t.Errorf("config.DefaultACMECA %q, acme.DefaultCA %q", DefaultACMECA, acme.DefaultCA)
	}
	if DefaultACMEStorage != acme.DefaultStorage {
		t.Errorf("config.DefaultACMEStorage %q, acme.DefaultStorage %q", DefaultACMEStorage, acme.DefaultStorage)
	}
}

// TestACMEListenDefault: tls.acme with no listen serves on 80 and 443; a
// listen of one's own is kept.
func TestACMEListenDefault(t *testing.T) {
	c, err := Parse("b.yaml", []byte("tls:\n  acme:\n    domains: [example.com]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listen) != 2 || c.Listen[0] != ":80" || c.Listen[1] != "https://:443" {
		t.Errorf("listen %q, want [:80 https://:443]", c.Listen)
	}
	c, err = Parse("b.yaml", []byte("listen: [\":8080\", \"https://:8443\"]\ntls:\n  acme:\n    domains: [example.com]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listen) != 2 || c.Listen[0] != ":8080" {
		t.Errorf("listen %q, want the file's", c.Listen)
	}
	c, err = Parse("b.yaml", nil)
	if err != nil || len(c.Listen) != 1 || c.Listen[0] != ":8080" {
		t.Errorf("no file: listen %q (%v), want [:8080]", c.Listen, err)
	}
}
