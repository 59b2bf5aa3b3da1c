// Command goclient is the compiled reference client of benchmarks/loadtest_vs_compiled.py
// and benchmarks/c100k.py. By default: N connections, each in a closed loop (send, read the
// echo, check it, repeat) for a fixed time, then one JSON line with the echo rate. With
// -period (openloop.go): connections opened at a paced rate from several source
// addresses, each sending one message per period on a fixed schedule, latency counted
// from the intended send time. Built with Debian's golang-go and
// golang-github-gorilla-websocket-dev (GO111MODULE=off).
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8888/ws", "echo endpoint")
	conns := flag.Int("c", 50, "connections")
	duration := flag.Duration("d", 10*time.Second, "test duration")
	size := flag.Int("size", 64, "payload bytes")
	insecure := flag.Bool("insecure", false, "wss: skip certificate checks (self-signed)")
	period := flag.Duration("period", 0, "open loop: one message per connection per period")
	sources := flag.String("src", "", "open loop: local source addresses, comma-separated")
	rate := flag.Float64("rate", 0, "open loop: connections opened per second (0: at once)")
	inflight := flag.Int("inflight", 256, "open loop: handshakes in progress at most")
	hold := flag.Duration("hold", 30*time.Second, "open loop: how long after the last open")
	flag.Parse()
	dialer := *websocket.DefaultDialer
	if *insecure {
		dialer.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	if *period > 0 {
		openLoop(dialer, *url, *conns, *sources, *rate, *inflight, *period, *hold, *size)
		return
	}

	var echoed, mismatched int64
	var failed int64
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	start := make(chan struct{})
	clients := make([]*websocket.Conn, 0, *conns)
	var mu sync.Mutex
	ready.Add(*conns)
	for i := 0; i < *conns; i++ {
		go func() {
			defer ready.Done()
			c, _, err := dialer.Dial(*url, nil)
			if err != nil {
				atomic.AddInt64(&failed, 1)
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
		}()
	}
	ready.Wait()
	if len(clients) == 0 {
		fmt.Fprintln(os.Stderr, "goclient: no connection could be opened")
		os.Exit(1)
	}
	var stop int32
	for i, c := range clients {
		wg.Add(1)
		go func(id int, c *websocket.Conn) {
			defer wg.Done()
			payload := bytes.Repeat([]byte("x"), *size)
			<-start
			for seq := 0; atomic.LoadInt32(&stop) == 0; seq++ {
				copy(payload, fmt.Sprintf("%016x", seq))
				if err := c.WriteMessage(websocket.TextMessage, payload); err != nil {
					return
				}
				_, got, err := c.ReadMessage()
				if err != nil {
					return
				}
				if bytes.Equal(got, payload) {
					atomic.AddInt64(&echoed, 1)
				} else {
					atomic.AddInt64(&mismatched, 1)
				}
			}
		}(i, c)
	}
	began := time.Now()
	close(start)
	time.Sleep(*duration)
	atomic.StoreInt32(&stop, 1)
	elapsed := time.Since(began).Seconds()
	count := atomic.LoadInt64(&echoed)
	for _, c := range clients {
		c.Close()
	}
	wg.Wait()
	out, _ := json.Marshal(map[string]interface{}{
		"connections": len(clients),
		"failed":      failed,
		"echoed":      count,
		"mismatched":  mismatched,
		"elapsed_s":   elapsed,
		"msgs_per_s":  float64(count) / elapsed,
	})
	fmt.Println(string(out))
}
