package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// runner lets bench use package testbed outside of go test: it is the
// testing.TB of one part of a run. Only the methods below are used by
// package testbed and netnstest; the embedded nil interface satisfies the
// rest and panics if called. Fatal, FailNow and Skip end the part with a
// panic that run recovers.
type runner struct {
	testing.TB
	name string
	dir  string
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// stopPart is the panic of Fatal and Skip.
type stopPart struct{ msg string }

func newRunner(name, dir string, log io.Writer) *runner {
	return &runner{name: name, dir: dir, log: log}
}

func (r *runner) Helper()      {}
func (r *runner) Name() string { return r.name }

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *runner) Log(args ...any) { fmt.Fprintln(r.log, append([]any{r.name + ":"}, args...)...) }
func (r *runner) Logf(format string, args ...any) {
	fmt.Fprintf(r.log, r.name+": "+format+"\n", args...)
}

func (r *runner) Error(args ...any) {
	r.fail()
	r.Log(args...)
}

func (r *runner) Errorf(format string, args ...any) {
	r.fail()
	r.Logf(format, args...)
}

func (r *runner) Fatal(args ...any) { r.fail(); panic(stopPart{fmt.Sprint(args...)}) }
func (r *runner) Fatalf(format string, args ...any) {
	r.fail()
	panic(stopPart{fmt.Sprintf(format, args...)})
}
func (r *runner) FailNow()         { r.fail(); panic(stopPart{"failed"}) }
func (r *runner) Skip(args ...any) { r.fail(); panic(stopPart{fmt.Sprint(args...)}) }
func (r *runner) Skipf(format string, args ...any) {
	r.fail()
	panic(stopPart{fmt.Sprintf(format, args...)})
}
func (r *runner) SkipNow() { r.fail(); panic(stopPart{"skipped"}) }

func (r *runner) Fail() { r.fail() }

func (r *runner) fail() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
}

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) TempDir() string {
	d, err := os.MkdirTemp(r.dir, "tmp")
	if err != nil {
		r.Fatalf("temp dir: %v", err)
	}
	return d
}

// run calls f, then the cleanups in reverse order, and returns the message
// of a Fatal or Skip in f, or "".
func (r *runner) run(f func()) (msg string) {
	defer func() {
		r.mu.Lock()
		cs := r.cleanups
		r.cleanups = nil
		r.mu.Unlock()
		for i := len(cs) - 1; i >= 0; i-- {
			cs[i]()
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			s, ok := p.(stopPart)
			if !ok {
				panic(p)
			}
			msg = s.msg
		}
	}()
	f()
	return ""
}
