// Command stallclient downloads one URL over plain HTTP and reports, as one
// line of JSON, the sha256 of the body and the longest time during which no
// byte of it arrived: what a user sees of a failover. It is a test tool of
// the end-to-end tests and the benchmarks, not part of the product.
//
// Usage: stallclient [-timeout 60s] URL
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// report is what stallclient prints.
type report struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	// LongestStall is the longest time between two reads that delivered
	// body bytes, and StallAt when it began, from the first body byte.
	LongestStall time.Duration `json:"longest_stall_ns"`
	StallAt      time.Duration `json:"stall_at_ns"`
	Took         time.Duration `json:"took_ns"`
}

func main() {
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: stallclient [-timeout D] URL")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	r, err := fetch(ctx, flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "stallclient:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

func fetch(ctx context.Context, url string) (report, error) {
	var r report
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return r, err
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var first, last time.Time
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			now := time.Now()
			if first.IsZero() {
				first = now
			} else if gap := now.Sub(last); gap > r.LongestStall {
				r.LongestStall, r.StallAt = gap, last.Sub(first)
			}
			last = now
			h.Write(buf[:n])
			r.Bytes += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, fmt.Errorf("read body after %d bytes: %w", r.Bytes, err)
		}
	}
	r.SHA256 = hex.EncodeToString(h.Sum(nil))
	r.Took = time.Since(start)
	return r, nil
}
