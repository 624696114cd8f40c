package config

import (
	"fmt"
	"strings"
)

// ApplyEnv overrides settings from the environment, read through getenv
// (os.Getenv in berth run). BERTH_LISTEN, a comma-separated list of listen
// addresses, replaces listen. BERTH_USER is app.user's default: it applies
// only when the config leaves app.user empty, so an image can drop its
// workers to a non-root user even under a config mounted by its user.
// Unset or empty variables change nothing. On error c is unchanged.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	if u := getenv("BERTH_USER"); u != "" && c.App.User == "" {
		c.App.User = u
	}
	v := getenv("BERTH_LISTEN")
	if v == "" {
		return nil
	}
	var listen []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			listen = append(listen, s)
		}
	}
	if len(listen) == 0 {
		return fmt.Errorf("BERTH_LISTEN=%q names no address; give comma-separated addresses such as :8080,unix:/run/berth/http.sock, or unset it", v)
	}
	for i, l := range listen {
		if err := checkListen(l); err != nil {
			return fmt.Errorf("BERTH_LISTEN: %w", err)
		}
		for j := range i {
			if listenConflict(listen[j], l) {
				return fmt.Errorf("BERTH_LISTEN: %q binds the same address as %q; remove one of them", l, listen[j])
			}
		}
		if c.Admin.Listen != "off" && listenConflict(c.Admin.Listen, l) {
			return fmt.Errorf("BERTH_LISTEN: %q is the admin endpoint's address (admin.listen %q); the admin endpoint must not be public: use another address, or change admin.listen", l, c.Admin.Listen)
		}
	}
	c.Listen = listen
	return nil
}
