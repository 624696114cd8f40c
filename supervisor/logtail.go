// The last lines Python children write to stderr, kept per generation so
// that an abandoned roll can show what its workers said before dying.
package supervisor

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sync"
)

// Tail sizes: enough for a Python traceback's last frames and its error,
// little enough to read in /status.
const (
	tailLines    = 20
	tailLineSize = 300
)

// logTail is a ring of the last tailLines lines. Its zero value is empty and
// ready to use; it is written by the copying goroutines and read by the loop.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *logTail) add(line string) {
	if len(line) > tailLineSize {
		line = line[:tailLineSize] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == tailLines {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

// last returns a copy of the kept lines, oldest first; nil for a nil tail.
func (t *logTail) last() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}

// teeStderr returns the write end of a pipe whose lines are copied to
// berth's stderr unchanged and kept in t. The caller gives it to a child
// and closes its own copy once the child has started; the copy ends when
// every writer (the child, the workers a zygote forks) has closed it.
func teeStderr(t *logTail) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stderr pipe for a python process: %w", err)
	}
	go func() {
		defer r.Close()
		br := bufio.NewReaderSize(r, 64<<10)
		for {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 {
				os.Stderr.Write(line)
				t.add(string(bytes.TrimRight(line, "\n")))
			}
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
		}
	}()
	return w, nil
}
