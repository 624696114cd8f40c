package acme

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// DomainStatus is one domain's certificate as `berth status` shows it.
type DomainStatus struct {
	Domain string `json:"domain"`
	// NotAfter is when the certificate in force expires; zero: there is
	// none yet (TLS handshakes for the name fail).
	NotAfter time.Time `json:"not_after"`
	// Issuer is the certificate's issuing CA's name (its common name,
	// "R11", "E6", "Pebble Intermediate CA ..."); "" with no certificate.
	Issuer string `json:"issuer,omitempty"`
	// Serial is the certificate's serial number in hex, as CT logs and
	// openssl show it; "" with no certificate.
	Serial string `json:"serial,omitempty"`
	// NextRenewal is about when the renewal will be attempted: the
	// earliest of the CA's renewal info (ARI) chosen time, the start of
	// the renewal window (RenewalWindowRatio) and the emergency margin; a
	// maintenance check (RenewCheckInterval) then picks it up. Zero with
	// no certificate.
	NextRenewal time.Time `json:"next_renewal"`
	// ARIWindowStart and ARIWindowEnd are the renewal window the CA
	// suggests (ACME renewal info); zero when the CA gave none.
	ARIWindowStart time.Time `json:"ari_window_start"`
	ARIWindowEnd   time.Time `json:"ari_window_end"`
	// LastError is the last failed order's error, with the fix; "" once
	// an order succeeds. The certificate in force (if any) keeps serving.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at"`
	// Obtained is when this Manager last got a certificate from the CA
	// (zero: it loaded it from storage, or has none), ObtainTook how long
	// that order took.
	Obtained   time.Time `json:"obtained"`
	ObtainTook Duration  `json:"obtain_took"`
}

// Duration is a time.Duration written "1.5s" in JSON, as control.Duration
// is in berth's control messages.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("acme: duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("acme: duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Status reports every domain's certificate, in the order of Domains. It
// reads the renewal info from storage: call it for status requests and
// metric scrapes, not per request.
func (m *Manager) Status() []DomainStatus {
	out := make([]DomainStatus, 0, len(m.list))
	for _, d := range m.list {
		st := DomainStatus{Domain: d}
		var best *certmagic.Certificate
		for _, c := range m.cache.AllMatchingCertificates(d) {
			if c.Leaf == nil || !hasName(c.Names, d) {
				continue
			}
			if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
				c := c
				best = &c
			}
		}
		if best != nil {
			leaf := best.Leaf
			st.NotAfter = leaf.NotAfter
			st.Serial = fmt.Sprintf("%x", leaf.SerialNumber)
			st.Issuer = leaf.Issuer.CommonName
			if st.Issuer == "" {
				st.Issuer = leaf.Issuer.String()
			}
			ari := m.storedARI(d)
			if ari != nil {
				st.ARIWindowStart, st.ARIWindowEnd = ari.SuggestedWindow.Start, ari.SuggestedWindow.End
			}
			st.NextRenewal = m.nextRenewal(leaf.NotBefore, leaf.NotAfter, ari)
		}
		m.mu.Lock()
		s := m.state[d]
		st.LastError, st.LastErrorAt = s.lastErr, s.lastErrAt
		st.Obtained, st.ObtainTook = s.obtained, Duration(s.obtainTook)
		m.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// nextRenewal mirrors certmagic's renewal decision (certNeedsRenewal) as a
// time: ARI's selected time less a check interval, the ratio window's
// start, or the emergency margin, whichever comes first.
func (m *Manager) nextRenewal(notBefore, notAfter time.Time, ari *acme.RenewalInfo) time.Time {
	interval := m.opts.RenewCheckInterval
	if interval == 0 {
		interval = certmagic.DefaultRenewCheckInterval
	}
	ratio := m.opts.RenewalWindowRatio
	if ratio == 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	expires := notAfter.Truncate(time.Second).Add(time.Second)
	life := expires.Sub(notBefore)
	next := expires.Add(-time.Duration(float64(life) * ratio))
	if t := expires.Add(-5 * interval); t.Before(next) {
		next = t
	}
	if ari != nil && !ari.SelectedTime.IsZero() {
		if t := ari.SelectedTime.Add(-interval); t.Before(next) {
			next = t
		}
	}
	return next
}

// storedARI reads the renewal info certmagic keeps beside the certificate
// (it does not export the one in its cache).
func (m *Manager) storedARI(domain string) *acme.RenewalInfo {
	raw, err := m.storage.Load(m.ctx, certmagic.StorageKeys.SiteMeta(m.issuer.IssuerKey(), domain))
	if err != nil {
		return nil
	}
	var res certmagic.CertificateResource
	if json.Unmarshal(raw, &res) != nil {
		return nil
	}
	var data acme.Certificate
	if json.Unmarshal(res.IssuerData, &data) != nil || data.RenewalInfo == nil || !data.RenewalInfo.HasWindow() {
		return nil
	}
	return data.RenewalInfo
}

func hasName(names []string, d string) bool {
	for _, n := range names {
		if normalize(n) == d {
			return true
		}
	}
	return false
}

// unix is t as a metric value; zero time is 0, not year 1.
func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
