// Package worker ships berth's Python side: the worker runtime that serves a WSGI app over the
// uwsgi protocol (berth_worker.py, see docs/internals.md "Worker runtime"), the asyncio worker it
// hands an ASGI app to (berth_asgi.py, "ASGI workers"), the built-in demo app, and Discover,
// which finds the app in a directory.
package worker

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// Runtime is the source of berth_worker.py, the stdlib-only worker runtime.
//
//go:embed berth_worker.py
var Runtime []byte

// ASGIRuntime is the source of berth_asgi.py, the asyncio worker the runtime imports for an ASGI
// app; it is written next to berth_worker.py, whose directory is on the worker's sys.path.
//
//go:embed berth_asgi.py
var ASGIRuntime []byte

// DemoApp is the source of the built-in demo WSGI app, written as berth_demo.py.
//
//go:embed demo_app.py
var DemoApp []byte

const (
	// RuntimeFile is the name WriteFiles gives the runtime; start it as
	// `PYTHON -u <dir>/berth_worker.py serve|zygote`.
	RuntimeFile = "berth_worker.py"
	// ASGIFile is the name WriteFiles gives the ASGI worker module.
	ASGIFile = "berth_asgi.py"
	// DemoFile is the name WriteFiles gives the demo app. It sits next to the runtime, whose
	// directory Python puts on sys.path, so DemoModule imports without any chdir.
	DemoFile = "berth_demo.py"
	// DemoModule is the BERTH_APP value that serves the demo app.
	DemoModule = "berth_demo:application"
	// ExitImport is the worker's exit code when the app fails to import. Before READY=1 it is
	// fatal for the whole server: respawning would fail the same way.
	ExitImport = 4
	// ExitUsage is the worker's exit code for a bad mode or missing BERTH_* variable.
	ExitUsage = 2
)

// WriteFiles writes berth_worker.py, berth_asgi.py and berth_demo.py into dir (which must exist) with mode
// 0644, each atomically (temp file + rename), so a worker starting meanwhile never reads a
// half-written file. It returns the runtime's path.
func WriteFiles(dir string) (runtimePath string, err error) {
	for _, f := range []struct {
		name string
		data []byte
	}{{RuntimeFile, Runtime}, {ASGIFile, ASGIRuntime}, {DemoFile, DemoApp}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, RuntimeFile), nil
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w (is the run directory writable?)", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
