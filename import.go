package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/berth-dev/berth/importer"
)

// cmdImport is `berth import`: it prints the berth.yaml the files translate
// to. Exit 0; 1 with --check when a setting was not translated (listed on
// stderr); 2 for bad usage or a file that cannot be read or parsed.
func cmdImport(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("import", flag.ContinueOnError)
	fl.SetOutput(stderr)
	check := fl.Bool("check", false, "exit 1 when any setting could not be translated (for scripts)")
	python := fl.String("python", importer.DefaultPython, "the Python that evaluates gunicorn.conf.py, and app.python when the sources name no virtualenv")
	prefix := fl.String("nginx-prefix", importer.DefaultNginxPrefix, "where nginx's relative include paths are looked up when not beside the file")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: berth import [--check] [--python PATH] [--nginx-prefix DIR] FILE...")
		fmt.Fprintln(stderr, "FILE is a uwsgi.ini, a gunicorn.conf.py or an nginx config, in any mix.")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() == 0 {
		fl.Usage()
		return 2
	}
	res, err := importer.Import(fl.Args(), importer.Options{Python: *python, NginxPrefix: *prefix})
	if err != nil {
		fmt.Fprintf(stderr, "berth import: %v\n", err)
		return 2
	}
	stdout.Write(res.YAML)
	untranslated := res.Untranslated()
	fmt.Fprintf(stderr, "berth import: %d settings translated, %d not translated, %d not needed in berth (listed at the end of the output)\n",
		res.Translated, len(untranslated), len(res.Skipped)-len(untranslated))
	if *check && len(untranslated) > 0 {
		for _, s := range untranslated {
			fmt.Fprintf(stderr, "%s: %s: %s\n", s.Source, s.Reason, s.Why)
		}
		return 1
	}
	return 0
}
