// Package cgi holds what a backend's request encoding needs to know of a
// request beyond its HTTP head: the CGI meta-variables (RFC 3875) that the
// proxy works out once per request (the client's address after trusted
// proxies, the scheme, the decoded path, the server's name and port, the
// body's length, the request ID) and that the uwsgi packet, the ASGI head
// and the upstream HTTP head all carry.
package cgi

// Vars are one request's meta-variables. The zero value is a request from
// nowhere: every variable empty, none of them sent.
type Vars struct {
	RemoteAddr    string // after trusted X-Forwarded-For
	RemotePort    string
	Scheme        string // "http" or "https"
	PathInfo      string // decoded, dot segments resolved
	ServerName    string
	ServerPort    string
	ContentLength string // "" when the request has no body
	RequestID     string // HTTP_X_REQUEST_ID in place of the client's; "" passes the client's on
}
