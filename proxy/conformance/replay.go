package conformance

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// Probe is the request sent after a case's responses to find out whether
// the connection is still open and in step: an open one answers it 200.
// Apps see it as ProbeServed; callers drop that from what the app got.
const (
	Probe       = "GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"
	ProbeServed = "GET /probe "
)

// Replay writes raw on c and reads want final responses (1xx are skipped),
// then sends Probe to find out whether c was closed. It returns the
// statuses read so far with any error. c gets a 5 s deadline.
func Replay(c net.Conn, raw string, want int) (statuses []int, closed bool, err error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, false, fmt.Errorf("write the request bytes: %w", err)
	}
	br := bufio.NewReader(c)
	for len(statuses) < want {
		code, err := readFinal(br)
		if err != nil {
			return statuses, false, fmt.Errorf("read response %d of %d: %w", len(statuses)+1, want, err)
		}
		statuses = append(statuses, code)
	}
	closed, err = probe(c, br)
	return statuses, closed, err
}

// Observe is Replay for when the number of responses is not known: it
// reads responses until the connection closes or none starts within idle,
// then probes. It depends on timing, so tests use it only to say what a
// server did once Replay found a mismatch.
func Observe(c net.Conn, raw string, idle time.Duration) (statuses []int, closed bool, err error) {
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, false, fmt.Errorf("write the request bytes: %w", err)
	}
	br := bufio.NewReader(c)
	for {
		c.SetDeadline(time.Now().Add(idle))
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if isClosed(err) {
				return statuses, true, nil
			}
			return statuses, false, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		code, err := readFinal(br)
		if err != nil {
			return statuses, false, fmt.Errorf("read response %d: %w", len(statuses)+1, err)
		}
		statuses = append(statuses, code)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	closed, err = probe(c, br)
	return statuses, closed, err
}

// readFinal reads responses up to the next final one and returns its
// status; bodies are discarded.
func readFinal(br *bufio.Reader) (int, error) {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 {
			return resp.StatusCode, nil
		}
	}
}

// probe sends Probe: a closed connection refuses it (a write error, or
// EOF or a reset before any byte of an answer); an open one answers 200.
func probe(c net.Conn, br *bufio.Reader) (closed bool, err error) {
	if _, err := io.WriteString(c, Probe); err != nil {
		return true, nil
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		if isClosed(err) {
			return true, nil
		}
		return false, fmt.Errorf("read the probe's response: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return false, fmt.Errorf("the probe was answered %d, not 200: the framing is out of step", resp.StatusCode)
	}
	return false, nil
}

func isClosed(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}

// Strip drops the probe's request from the end of what an app got.
func Strip(served []string) []string {
	if n := len(served); n > 0 && served[n-1] == ProbeServed {
		return served[:n-1]
	}
	return served
}
