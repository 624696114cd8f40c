package wsframe

import (
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// HandshakeError is a request that is not a websocket handshake berth can
// accept. Answer it with Status and no upgrade; on 426, also send
// "Sec-WebSocket-Version: 13" so the client knows which version to retry
// with (RFC 6455 §4.4).
type HandshakeError struct {
	Status int    // 400, 405 or 426 for the client; 502 when WriteAccept refuses what the app gave
	Msg    string // what was wrong, for the log
}

func (e *HandshakeError) Error() string { return "websocket handshake: " + e.Msg }

// CheckRequest returns the client's Sec-WebSocket-Key if r is a valid
// opening handshake (RFC 6455 §4.2.1), or a *HandshakeError. It does not
// look at Origin or Sec-WebSocket-Protocol: those are the app's to judge.
func CheckRequest(r *http.Request) (key string, err error) {
	fail := func(status int, msg string) (string, error) {
		return "", &HandshakeError{Status: status, Msg: msg}
	}
	if r.Method != http.MethodGet {
		return fail(http.StatusMethodNotAllowed, "method "+r.Method+", want GET")
	}
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return fail(http.StatusBadRequest, r.Proto+" cannot upgrade, want HTTP/1.1")
	}
	if !hasToken(r.Header["Upgrade"], "websocket") {
		return fail(http.StatusBadRequest, `no "websocket" in the Upgrade header`)
	}
	if !hasToken(r.Header["Connection"], "upgrade") {
		return fail(http.StatusBadRequest, `no "upgrade" in the Connection header`)
	}
	if v := r.Header["Sec-Websocket-Version"]; len(v) != 1 || strings.TrimSpace(v[0]) != "13" {
		return fail(http.StatusUpgradeRequired, "Sec-WebSocket-Version is not 13")
	}
	k := r.Header["Sec-Websocket-Key"]
	if len(k) != 1 {
		return fail(http.StatusBadRequest, "want exactly one Sec-WebSocket-Key")
	}
	key = strings.TrimSpace(k[0])
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		return fail(http.StatusBadRequest, "Sec-WebSocket-Key is not 16 bytes in base64")
	}
	return key, nil
}

// hasToken reports whether a comma-separated header list holds token,
// case-insensitively.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// AcceptKey is the Sec-WebSocket-Accept answering clientKey: proof to the
// client that the server read its handshake (RFC 6455 §4.2.2).
func AcceptKey(clientKey string) string {
	h := sha1.Sum([]byte(clientKey + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// ownHeaders are the handshake's: an app's copy of one is dropped rather
// than sent twice, which a client would reject.
var ownHeaders = []string{"Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"}

// WriteAccept writes the 101 answering a handshake whose Sec-WebSocket-Key
// was key, in one Write so that no half response goes out before an
// error. subprotocol ("" for none) must be one the client offered; header
// holds name/value pairs to add. Nothing is written if a name is not an
// HTTP token or a value holds CR, LF or NUL, which could split the
// response.
func WriteAccept(w io.Writer, key, subprotocol string, header [][2]string) error {
	b := make([]byte, 0, 160)
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = append(b, AcceptKey(key)...)
	b = append(b, "\r\n"...)
	if subprotocol != "" {
		if !isToken(subprotocol) {
			return &HandshakeError{Status: http.StatusBadGateway, Msg: "subprotocol " + strconv.Quote(subprotocol) + " is not a token"}
		}
		b = append(b, "Sec-WebSocket-Protocol: "...)
		b = append(b, subprotocol...)
		b = append(b, "\r\n"...)
	}
next:
	for _, h := range header {
		if !isToken(h[0]) {
			return &HandshakeError{Status: http.StatusBadGateway, Msg: "header name " + strconv.Quote(h[0]) + " is not a token"}
		}
		if strings.ContainsAny(h[1], "\r\n\x00") {
			return &HandshakeError{Status: http.StatusBadGateway, Msg: "header " + h[0] + " has CR, LF or NUL in its value"}
		}
		for _, own := range ownHeaders {
			if strings.EqualFold(h[0], own) {
				continue next
			}
		}
		b = append(b, h[0]...)
		b = append(b, ": "...)
		b = append(b, h[1]...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	_, err := w.Write(b)
	return err
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}
