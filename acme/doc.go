// Package acme gets and renews berth's certificates from an ACME CA (Let's
// Encrypt by default) for the names in tls.acme.domains, so a public site
// needs no certbot, no cron job and no mounted certificate.
//
// It is a thin adapter over github.com/caddyserver/certmagic, what Caddy
// uses: certmagic brings the ACME client (mholt/acmez), the account, the
// storage and its locks, renewal ahead of expiry and by the CA's renewal
// info (ARI, on by default: certmagic's DisableARI is left false, and
// TestARIRenewal shows a renewal the CA's window alone asked for), retries
// with backoff for 30 days, and the challenge answers. golang.org/x/crypto's
// acme would leave all of that to write and test. What this package adds is
// berth's shape: challenges answered on berth's own listeners, one error
// and expiry per domain for `berth status` and Prometheus, log lines that
// say what happened and the fix.
//
// # Which process runs it: the proxy
//
// A Manager belongs in `berth proxy`, not in the supervisor:
//
//   - The proxy owns the listeners and does the TLS handshakes. The
//     TLS-ALPN-01 answer and the certificate in force come from certmagic's
//     in-memory cache in the process doing the handshake; a renewal is an
//     atomic swap in that cache (new handshakes get the new certificate,
//     open connections keep theirs). With the supervisor running it, every
//     renewal would become a control message with PEM in it, and the proxy
//     would still need certmagic to answer challenges from the storage.
//   - The proxy is replaced with overlap (a crash, a listen change), so two
//     Managers briefly share the storage. That is what the storage's locks
//     are for, and it is tested across two processes: one order between
//     them, and the one waiting answers the CA's validation of the other's
//     order from the storage (certmagic's distributed solving). A new proxy
//     loads the stored certificate before New returns (under 2 ms in the
//     tests), so its first handshake is served and nothing is ordered.
//   - PID 1 stays free of outbound connections to a CA, of certmagic's
//     goroutines and of its process-wide state; a fault there costs a proxy
//     restart, not the container.
//
// The price is that the proxy's user (app.user) must own the storage; the
// supervisor gives it to that user at boot with PrepareStorage.
//
// # Storage and permissions
//
// Storage (tls.acme.storage, default /var/lib/berth/acme) holds the ACME
// account key, each certificate with its private key and metadata
// (certificates/<ca>/<name>/), the ACME challenge tokens in flight and the
// locks (locks/*.lock). certmagic creates directories 0700 and files 0600,
// writes through a temporary file and a rename, and takes a lock by
// creating a file with O_EXCL (kept fresh every 5 s, taken over when 10 s
// stale, so a killed proxy holds nothing for long). Hence:
//
//   - the process running the Manager must own the directory and all in it
//     (read, write, search; create and remove files): PrepareStorage,
//     called as root, creates it and lchowns what belongs to someone else;
//   - replicas sharing one volume must run as the same uid (0700 shuts out
//     a group; OpenShift's arbitrary UIDs need runAsUser fixed for it);
//   - nothing else may write there as root: a root-owned file is one the
//     proxy cannot replace;
//   - a volume, not the container's layer: a restart that finds its
//     certificates asks the CA for nothing (Let's Encrypt limits new
//     certificates per name per week).
//
// # Challenges and listeners
//
// certmagic would open its own listeners for challenges; in a container
// they would reach nothing. New therefore checks that berth's listeners
// hold HTTPAddr and HTTPSAddr: certmagic then finds the ports taken and
// leaves the answers to HandleHTTPChallenge (the plain listener, before any
// route or redirect) and GetCertificate with NextProtos (the https
// listener). That probe opens and closes one TCP connection to each
// listener per order: a proxy counting handshake errors sees one.
//
// # When the CA fails
//
// The certificate in force keeps serving (an expired one too: clients then
// refuse it, and the metrics say so long before). A failed order is
// retried by certmagic with backoff: a first certificate after 1, 2, 2, 5,
// 10 minutes and so on up to 6 hours apart, for 30 days; a renewal at the
// same pace, counted per name for the whole process (a Manager replacing
// another on reload keeps the backoff). With the default window a 90-day
// certificate starts renewing 30 days before expiry, so a CA has weeks to
// come back. Each failure is in Status, the metrics and the log, with the
// fix where the error points at one.
//
// See WIRING.md beside this file for what the proxy, the supervisor and
// the config must do.
package acme
