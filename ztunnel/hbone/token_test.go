package hbone

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// TestTokenPassedOnByWriter: a writer woken to take the free read token that no longer needs it
// (its window arrived in the same read as another stream's data) leaves the socket to someone:
// the token invariant holds, and PINGs and new streams are still answered while no stream reads.
func TestTokenPassedOnByWriter(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run("", func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			again := make(chan struct{}, 2)
			readN := make(chan int, 4)
			startWrite := make(chan struct{})
			wrote := make(chan error, 1)
			hold := make(chan struct{})
			defer close(hold)
			hc, p, b := tcpServer(t, DefaultServerConfig(), HandlerFunc(func(ctx context.Context, req *Request) error {
				c, err := req.Accept()
				if err != nil {
					return err
				}
				switch req.Authority.Port() {
				case 1:
					buf := make([]byte, 64)
					for {
						n, err := c.Read(buf)
						if err != nil {
							return err
						}
						readN <- n
						select {
						case <-again:
						case <-hold:
							return nil
						}
					}
				case 3:
					<-startWrite
					_, err := c.Write(make([]byte, 300))
					wrote <- err
					<-hold
				default:
					<-hold
				}
				return nil
			}), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
			go p.readFrames()
			p.next(ofType(http2.FrameSettings, 0))
			p.must(p.fr.WriteSettingsAck())
			p.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.7:1")
			p.next(ofType(http2.FrameHeaders, 1))
			p.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.7:3")
			p.next(ofType(http2.FrameHeaders, 3))
			// Stream 1's first Read gets "a" and comes straight back: it holds the token.
			again <- struct{}{}
			p.must(p.fr.WriteData(1, false, []byte("a")))
			<-readN
			holds := func(id uint32) func() bool {
				return func() bool {
					hc.mu.Lock()
					defer hc.mu.Unlock()
					return hc.tHeld && hc.tHolder != nil && hc.tHolder.id == id
				}
			}
			testutil.Eventually(t, testTimeout(), "stream 1 to hold the read token", holds(1))
			// Stream 3's writer runs out of stream window and waits as a winWaiter, with bgTimer
			// spent (the token was held when it fired).
			close(startWrite)
			p.next(ofType(http2.FrameData, 3))
			testutil.Eventually(t, testTimeout(), "stream 3's writer to wait for window", func() bool {
				hc.mu.Lock()
				defer hc.mu.Unlock()
				return hc.winWaiters == 1 && !hc.bgArmed
			})
			// One TCP write: the writer's window, then data for the holder, whose Read returns
			// and does not come back.
			var buf bytes.Buffer
			fr := http2.NewFramer(&buf, nil)
			fr.WriteWindowUpdate(3, 1000)
			fr.WriteData(1, false, []byte("b"))
			if _, err := b.Write(buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			<-readN
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			hc.mu.Lock()
			lost := hc.tokenLostLocked()
			hc.mu.Unlock()
			if lost {
				t.Error("read token free with nobody to take it")
			}
			p.must(p.fr.WritePing(false, [8]byte{'x'}))
			p.headers(5, false, ":method", "CONNECT", ":authority", "10.0.0.7:5")
			timeout := time.After(testTimeout())
			var sawPing, sawHeaders bool
			for !sawPing || !sawHeaders {
				select {
				case f := <-p.frames:
					sawPing = sawPing || (f.typ == http2.FramePing && f.flags.Has(http2.FlagPingAck))
					sawHeaders = sawHeaders || (f.typ == http2.FrameHeaders && f.id == 5)
				case <-timeout:
					t.Fatalf("nobody reads the connection: PING ack %v, stream 5 response %v", sawPing, sawHeaders)
				}
			}
		})
	}
}
