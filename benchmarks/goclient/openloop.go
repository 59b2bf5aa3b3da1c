package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// A message carries its connection's sequence number and its intended send time, so the
// reader checks order and measures latency from the schedule (corrected for coordinated
// omission: a late send does not hide a stall).
const header = 16

type result struct {
	Attempted   int64     `json:"attempted"`
	Established int64     `json:"established"`
	Failed      int64     `json:"failed"`
	Dropped     int64     `json:"dropped"`
	ServerClose int64     `json:"server_closed"` // of Dropped: ended by a close frame from the server
	StartUnix   float64   `json:"start_unix"`
	LastOpen    float64   `json:"last_open_unix"`
	Sent        int64     `json:"sent"`
	Received    int64     `json:"received"`
	Mismatched  int64     `json:"mismatched"`
	CPUSeconds  float64   `json:"cpu_s"`
	RampMs      []float64 `json:"ramp_latency_ms"`
	HoldMs      []float64 `json:"hold_latency_ms"`
	FirstError  string    `json:"first_error,omitempty"`
}

func openLoop(dialer websocket.Dialer, url string, conns int, sources string, rate float64,
	inflight int, period, hold time.Duration, size int) {
	if size < header {
		size = header
	}
	var addrs []*net.TCPAddr
	for _, src := range strings.Split(sources, ",") {
		if src != "" {
			addrs = append(addrs, &net.TCPAddr{IP: net.ParseIP(src)})
		}
	}
	var res result
	var mu sync.Mutex // guards the latency lists, lastOpen and FirstError
	var lastOpen time.Time
	var allOpen atomic.Value // time.Time once every dial has ended
	var stop int32
	done := make(chan struct{})
	var senders, readers sync.WaitGroup
	start := time.Now()
	res.StartUnix = float64(start.UnixNano()) / 1e9
	clients := make([]*websocket.Conn, conns)
	slots := make(chan struct{}, inflight)
	var dials sync.WaitGroup
	// A handshake the server has not answered in 30 s is a failure, as in the bundled tester.
	dialer.HandshakeTimeout = 30 * time.Second
	fail := func(err error) {
		mu.Lock()
		if res.FirstError == "" {
			res.FirstError = err.Error()
		}
		mu.Unlock()
	}

	run := func(c *websocket.Conn, opened time.Time) {
		phase := time.Duration(rand.Int63n(int64(period)))
		sent := make([]byte, size)
		for i := range sent {
			sent[i] = 'x'
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			for k := int64(0); ; k++ {
				due := opened.Add(phase + time.Duration(k)*period)
				select {
				case <-time.After(time.Until(due)):
				case <-done:
					return
				}
				binary.BigEndian.PutUint64(sent[0:8], uint64(k))
				binary.BigEndian.PutUint64(sent[8:16], uint64(due.UnixNano()))
				if err := c.WriteMessage(websocket.BinaryMessage, sent); err != nil {
					return
				}
				atomic.AddInt64(&res.Sent, 1)
			}
		}()
		readers.Add(1)
		go func() {
			defer readers.Done()
			for want := uint64(0); ; want++ {
				_, got, err := c.ReadMessage()
				if err != nil {
					if atomic.LoadInt32(&stop) == 0 {
						atomic.AddInt64(&res.Dropped, 1)
						if _, ok := err.(*websocket.CloseError); ok {
							atomic.AddInt64(&res.ServerClose, 1)
						}
						fail(err)
					}
					return
				}
				now := time.Now()
				if len(got) != size || binary.BigEndian.Uint64(got[0:8]) != want {
					atomic.AddInt64(&res.Mismatched, 1)
					continue
				}
				atomic.AddInt64(&res.Received, 1)
				due := time.Unix(0, int64(binary.BigEndian.Uint64(got[8:16])))
				ms := float64(now.Sub(due).Microseconds()) / 1000
				open, _ := allOpen.Load().(time.Time)
				mu.Lock()
				if open.IsZero() || due.Before(open) {
					res.RampMs = append(res.RampMs, ms)
				} else {
					res.HoldMs = append(res.HoldMs, ms)
				}
				mu.Unlock()
			}
		}()
	}

	for i := 0; i < conns; i++ {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		}
		slots <- struct{}{}
		dials.Add(1)
		res.Attempted++
		go func(i int) {
			defer dials.Done()
			defer func() { <-slots }()
			d := dialer
			if len(addrs) > 0 {
				local := addrs[i%len(addrs)]
				d.NetDial = func(network, addr string) (net.Conn, error) {
					return (&net.Dialer{LocalAddr: local, Timeout: 30 * time.Second}).Dial(network, addr)
				}
			}
			c, _, err := d.Dial(url, nil)
			if err != nil {
				atomic.AddInt64(&res.Failed, 1)
				fail(err)
				return
			}
			now := time.Now()
			mu.Lock()
			clients[i] = c
			if now.After(lastOpen) {
				lastOpen = now
			}
			mu.Unlock()
			atomic.AddInt64(&res.Established, 1)
			run(c, now)
		}(i)
	}
	dials.Wait()
	allOpen.Store(time.Now())
	time.Sleep(hold)
	atomic.StoreInt32(&stop, 1)
	close(done)
	// Echoes of the last sends still on their way: a second to arrive, then close.
	time.Sleep(time.Second)
	for _, c := range clients {
		if c != nil {
			c.Close()
		}
	}
	senders.Wait()
	readers.Wait()
	if !lastOpen.IsZero() {
		res.LastOpen = float64(lastOpen.UnixNano()) / 1e9
	}
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) == nil {
		res.CPUSeconds = float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	}
	sort.Float64s(res.RampMs)
	sort.Float64s(res.HoldMs)
	out, _ := json.Marshal(res)
	fmt.Fprintln(os.Stdout, string(out))
}
