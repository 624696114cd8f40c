package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-dev/berth/config"
)

// berth's bench config turns tls.http3 on only where a scenario asks for
// it, and stays a config berth accepts either way.
func TestBerthTemplateHTTP3(t *testing.T) {
	dir := t.TempDir()
	for _, h3 := range []bool{false, true} {
		d := tmplData{Dir: dir, Port: 8000, AdminPort: 8001, TLSPort: 8443, HTTP3: h3, Workers: 2,
			Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"),
			AppDir: dir, Module: "hello:application", StaticDir: dir, Env: map[string]string{"BENCH_GEN": "0"}}
		dst := filepath.Join(dir, "berth.yaml")
		if err := render("berth.yaml.tmpl", d, dst); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Parse(dst, b)
		if err != nil {
			t.Fatalf("http3 %v: berth refuses the bench config: %v\n%s", h3, err, b)
		}
		if cfg.TLS.HTTP3 != h3 {
			t.Errorf("rendered with HTTP3 %v, config has tls.http3 %v:\n%s", h3, cfg.TLS.HTTP3, b)
		}
	}
}

func TestFreeTCPUDPPort(t *testing.T) {
	port, err := freeTCPUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	if port <= 0 || port > 65535 {
		t.Errorf("port %d", port)
	}
}
