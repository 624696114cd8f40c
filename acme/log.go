package acme

// log.go turns certmagic's structured (zap) log into berth's one-line log.
// berth has no zap: its log is lines through a Printf-like function, so
// certmagic's entries become "acme: message key=value ..." lines. Only
// warnings and errors pass: certmagic's info lines (every lock taken, every
// rate-limiter wait) would drown berth's log, and the Manager says what
// matters at info level itself, in words (obtained, renewed, failed).

import (
	"fmt"
	"sort"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// quietMessages are certmagic lines that repeat what the Manager already
// says from the cert_failed event, with the fix; they would double every
// failure in the log.
var quietMessages = map[string]bool{
	"job failed":                            true,
	"could not get certificate from issuer": true,
	"will retry":                            true,
	"initiating certificate management":     true,
}

type logCore struct {
	logf   func(format string, args ...any)
	fields []zapcore.Field
}

func newZapLogger(logf func(string, ...any)) *zap.Logger {
	return zap.New(&logCore{logf: logf})
}

func (c *logCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *logCore) With(fields []zapcore.Field) zapcore.Core {
	n := &logCore{logf: c.logf, fields: make([]zapcore.Field, 0, len(c.fields)+len(fields))}
	n.fields = append(append(n.fields, c.fields...), fields...)
	return n
}

func (c *logCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) && !quietMessages[e.Message] {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *logCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(e.Message)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, enc.Fields[k])
	}
	c.logf("acme: %s: %s", strings.ToLower(e.Level.String()), b.String())
	return nil
}

func (c *logCore) Sync() error { return nil }
