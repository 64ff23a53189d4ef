package zds

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

func TestFDPassing(t *testing.T) {
	checkNoFDLeak(t)
	netns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Logf("no /proc/self/ns/net (%v): pipes only", err)
	} else {
		defer netns.Close()
	}
	ts := startServer(t, nil)
	h := newFakeHandler()
	startClient(t, ts.path, "node-a", h)
	testutil.Eventually(t, waitFor, "proxy connected", func() bool { return len(ts.Proxies()) == 1 })

	ws := []Workload{workload(t, "pipe")}
	if netns != nil {
		ws = append(ws, Workload{Info: &zdsv1.WorkloadInfo{Uid: "netns"}, Netns: netns})
	}
	for _, w := range ws {
		if err := ts.Add(t.Context(), w); err != nil {
			t.Fatalf("Add %s: %v", w.Info.Uid, err)
		}
		h.mu.Lock()
		got := h.inodes[w.Info.Uid]
		h.mu.Unlock()
		if want := fileID(t, w.Netns); got != want {
			t.Errorf("%s: proxy got dev/inode %v, want %v", w.Info.Uid, got, want)
		}
	}
}

func TestAddBeforeProxyIsReplayed(t *testing.T) {
	checkNoFDLeak(t)
	var mu sync.Mutex
	var replayAcks []string
	var proxyEvents []string
	ts := startServer(t, func(c *ServerConfig) {
		c.OnReplayAck = func(uid string, err error) {
			mu.Lock()
			defer mu.Unlock()
			replayAcks = append(replayAcks, fmt.Sprintf("%s %v", uid, err))
		}
		c.OnProxy = func(p Peer, connected bool) {
			mu.Lock()
			defer mu.Unlock()
			proxyEvents = append(proxyEvents, fmt.Sprintf("%s %v", p.Hello.GetNode(), connected))
		}
	})
	for _, uid := range []string{"b", "a"} {
		if err := ts.Add(t.Context(), workload(t, uid)); !errors.Is(err, ErrNoProxy) {
			t.Fatalf("Add %s with no proxy: %v, want ErrNoProxy", uid, err)
		}
	}
	if err := ts.Add(t.Context(), Workload{Info: &zdsv1.WorkloadInfo{Uid: "c"}}); !errors.Is(err, ErrNoProxy) {
		t.Fatalf("Add c (no netns): %v", err)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, ts.Workloads()); diff != "" {
		t.Errorf("Workloads (-want +got):\n%s", diff)
	}

	h := newFakeHandler()
	startClient(t, ts.path, "node-a", h)
	h.waitSeen(t, "add a", "add b", "keep c", "snapshot a,b,c")
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{"a <nil>", "b <nil>", "c <nil>"}, replayAcks); diff != "" {
		t.Errorf("OnReplayAck (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"node-a true"}, proxyEvents); diff != "" {
		t.Errorf("OnProxy (-want +got):\n%s", diff)
	}
	p := ts.Proxies()
	if len(p) != 1 || p[0].PID != int32(os.Getpid()) || p[0].UID != uint32(os.Getuid()) || p[0].Hello.GetNode() != "node-a" {
		t.Errorf("Proxies() = %+v, want this process as node-a", p)
	}
}

// An agent restart: the proxy reconnects to the new agent and drops what it does not replay.
func TestReplayAfterAgentRestart(t *testing.T) {
	checkNoFDLeak(t)
	h := newFakeHandler()
	cfg := DefaultServerConfig()
	cfg.Path = t.TempDir() + "/zds.sock"
	first, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	startClient(t, cfg.Path, "node-a", h)
	h.waitSeen(t, "snapshot ")
	for _, uid := range []string{"a", "b"} {
		if err := first.Add(t.Context(), workload(t, uid)); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if _, err := os.Stat(cfg.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Run: %v", err)
	}
	if err := first.Add(t.Context(), workload(t, "x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Run: %v, want ErrClosed", err)
	}

	second, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Workload{workload(t, "b"), {Info: &zdsv1.WorkloadInfo{Uid: "c"}}} {
		if err := second.Add(t.Context(), w); !errors.Is(err, ErrNoProxy) {
			t.Fatal(err)
		}
	}
	runBackground(t, "second Run", second.Run)
	h.waitSeen(t, "snapshot ", "add a", "add b", "add b", "keep c", "snapshot b,c")
}

func TestDel(t *testing.T) {
	checkNoFDLeak(t)
	ts := startServer(t, nil)
	if err := ts.Del(t.Context(), "a"); !errors.Is(err, ErrNoProxy) {
		t.Errorf("Del with no proxy: %v", err)
	}
	h := newFakeHandler()
	startClient(t, ts.path, "node-a", h)
	h.waitSeen(t, "snapshot ")
	if err := ts.Add(t.Context(), workload(t, "a")); err != nil {
		t.Fatal(err)
	}
	if err := ts.Del(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if err := ts.Del(t.Context(), "unknown"); err != nil {
		t.Fatal(err)
	}
	h.waitSeen(t, "snapshot ", "add a", "del a", "del unknown")
	if got := ts.Workloads(); len(got) != 0 {
		t.Errorf("Workloads after Del: %v", got)
	}
}

func TestAckErrors(t *testing.T) {
	var mu sync.Mutex
	replayErrs := map[string]error{}
	ts := startServer(t, func(c *ServerConfig) {
		c.OnReplayAck = func(uid string, err error) {
			mu.Lock()
			defer mu.Unlock()
			replayErrs[uid] = err
		}
	})
	if err := ts.Add(t.Context(), workload(t, "bad-replay")); !errors.Is(err, ErrNoProxy) {
		t.Fatal(err)
	}
	h := newFakeHandler()
	h.setFail("bad", "no room")
	h.setFail("bad-replay", "still no room")
	startClient(t, ts.path, "node-a", h)
	h.waitSeen(t, "add bad-replay", "snapshot bad-replay")

	err := ts.Add(t.Context(), workload(t, "bad"))
	var ae *AckError
	if !errors.As(err, &ae) || ae.Msg != "no room" {
		t.Errorf("Add refused by the proxy: %v, want an AckError %q", err, "no room")
	}
	mu.Lock()
	defer mu.Unlock()
	if !errors.As(replayErrs["bad-replay"], &ae) || ae.Msg != "still no room" {
		t.Errorf("OnReplayAck: %v", replayErrs["bad-replay"])
	}
	// A refusal is an answer, not a broken connection.
	if got := len(ts.Proxies()); got != 1 {
		t.Errorf("%d proxies after a refusal, want 1", got)
	}
}

func TestTwoProxies(t *testing.T) {
	checkNoFDLeak(t)
	ts := startServer(t, nil)
	if err := ts.Add(t.Context(), workload(t, "a")); !errors.Is(err, ErrNoProxy) {
		t.Fatal(err)
	}
	old, young := newFakeHandler(), newFakeHandler()
	startClient(t, ts.path, "old", old)
	old.waitSeen(t, "add a", "snapshot a")
	startClient(t, ts.path, "young", young)
	young.waitSeen(t, "add a", "snapshot a")

	var nodes []string
	for _, p := range ts.Proxies() {
		nodes = append(nodes, p.Hello.GetNode())
	}
	if diff := cmp.Diff([]string{"old", "young"}, nodes); diff != "" {
		t.Errorf("Proxies by ID (-want +got):\n%s", diff)
	}

	if err := ts.Add(t.Context(), workload(t, "b")); err != nil {
		t.Fatal(err)
	}
	young.setFail("c", "young is full")
	err := ts.Add(t.Context(), workload(t, "c"))
	var ae *AckError
	if !errors.As(err, &ae) || ae.Msg != "young is full" || !strings.Contains(err.Error(), "proxy 2") {
		t.Errorf("Add refused by one proxy: %v", err)
	}
	old.waitSeen(t, "add a", "snapshot a", "add b", "add c")
	young.waitSeen(t, "add a", "snapshot a", "add b", "add c")
}

// rawProxy connects as a proxy driven by the test, says Hello and acks the (empty) replay.
func rawProxy(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	uc := dialRaw(t, path)
	send(t, uc, hello("raw"))
	if m, _ := readAgent(t, uc); m.GetSnapshotSent() == nil {
		t.Fatalf("raw proxy: got %v, want SnapshotSent", m)
	}
	send(t, uc, ack(""))
	return uc
}

func TestProxyDiesBeforeAck(t *testing.T) {
	checkNoFDLeak(t)
	var mu sync.Mutex
	var gone []string
	ts := startServer(t, func(c *ServerConfig) {
		c.OnProxy = func(p Peer, connected bool) {
			if !connected {
				mu.Lock()
				defer mu.Unlock()
				gone = append(gone, p.Hello.GetNode())
			}
		}
	})
	h := newFakeHandler()
	startClient(t, ts.path, "good", h)
	h.waitSeen(t, "snapshot ")
	uc := rawProxy(t, ts.path)
	testutil.Eventually(t, waitFor, "two proxies", func() bool { return len(ts.Proxies()) == 2 })

	errc := make(chan error, 1)
	go func() { errc <- ts.Add(context.Background(), workload(t, "a")) }()
	m, f := readAgent(t, uc)
	if m.GetAdd().GetWorkload().GetUid() != "a" || f == nil {
		t.Fatalf("raw proxy got %v", m)
	}
	f.Close()
	uc.Close() // without acking

	if err := <-errc; !errors.Is(err, ErrProxyGone) {
		t.Errorf("Add: %v, want ErrProxyGone", err)
	}
	testutil.Eventually(t, waitFor, "raw proxy forgotten", func() bool { return len(ts.Proxies()) == 1 })
	if err := ts.Add(t.Context(), workload(t, "b")); err != nil {
		t.Errorf("Add with the good proxy left: %v", err)
	}
	h.waitSeen(t, "snapshot ", "add a", "add b")
	testutil.Eventually(t, waitFor, "OnProxy(raw, false)", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(gone, []string{"raw"})
	})
}

func TestStuckProxyTimesOut(t *testing.T) {
	checkNoFDLeak(t)
	ts := startServer(t, func(c *ServerConfig) { c.AckTimeout = 200 * time.Millisecond })
	uc := rawProxy(t, ts.path)
	testutil.Eventually(t, waitFor, "proxy connected", func() bool { return len(ts.Proxies()) == 1 })
	err := ts.Add(t.Context(), workload(t, "a"))
	if !errors.Is(err, ErrProxyGone) {
		t.Errorf("Add to a proxy that never acks: %v, want ErrProxyGone", err)
	}
	expectClosed(t, uc)
	testutil.Eventually(t, waitFor, "proxy forgotten", func() bool { return len(ts.Proxies()) == 0 })
	testutil.Eventually(t, waitFor, "timeout logged", func() bool { return ts.logs.contains("no ack within") })
}

func TestServerMalformed(t *testing.T) {
	pipe := func(t *testing.T) *os.File { return workload(t, "x").Netns }
	tests := []struct {
		name string
		// act sends the bad input on a fresh connection.
		act func(t *testing.T, uc *net.UnixConn, path string)
		log string
	}{
		{"garbage", func(t *testing.T, uc *net.UnixConn, _ string) { send(t, uc, []byte{0xff, 0xff, 0xff}) }, "malformed"},
		{"garbage with fd", func(t *testing.T, uc *net.UnixConn, _ string) { send(t, uc, []byte{0xff, 0xff}, pipe(t)) }, "malformed"},
		{"ack first", func(t *testing.T, uc *net.UnixConn, _ string) { send(t, uc, ack("")) }, "first message is not Hello"},
		{"empty payload", func(t *testing.T, uc *net.UnixConn, _ string) { send(t, uc, []byte{0x0a}) }, "malformed"},
		{"wrong version", func(t *testing.T, uc *net.UnixConn, _ string) {
			send(t, uc, &zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Hello{Hello: &zdsv1.Hello{Version: 2}}})
		}, "hello version 2"},
		{"hello with fds", func(t *testing.T, uc *net.UnixConn, _ string) { send(t, uc, hello("n"), pipe(t), pipe(t)) }, "proxy message with 2 fds"},
		{"oversized", func(t *testing.T, uc *net.UnixConn, _ string) {
			send(t, uc, make([]byte, MaxMessageSize+1), pipe(t))
		}, "packet larger than"},
		{"too many fds", func(t *testing.T, uc *net.UnixConn, _ string) {
			var fs []*os.File
			for range oobFDs + 1 {
				fs = append(fs, pipe(t))
			}
			send(t, uc, hello("n"), fs...)
		}, "control data truncated"},
		{"second hello", func(t *testing.T, _ *net.UnixConn, path string) { send(t, rawProxy(t, path), hello("again")) }, "Hello after Hello"},
		{"unsolicited ack", func(t *testing.T, _ *net.UnixConn, path string) { send(t, rawProxy(t, path), ack("")) }, "no message outstanding"},
	}
	ts := startServer(t, nil)
	h := newFakeHandler()
	startClient(t, ts.path, "good", h)
	h.waitSeen(t, "snapshot ")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoFDLeak(t)
			uc := dialRaw(t, ts.path)
			tt.act(t, uc, ts.path)
			if tt.name == "second hello" || tt.name == "unsolicited ack" {
				uc.Close() // the raw proxy's own connection is the one to watch
			} else {
				expectClosed(t, uc)
			}
			testutil.Eventually(t, waitFor, "error logged", func() bool { return ts.logs.contains(tt.log) })
			testutil.Eventually(t, waitFor, "only the good proxy left", func() bool { return len(ts.Proxies()) == 1 })
			if err := ts.Del(t.Context(), "probe"); err != nil {
				t.Errorf("good proxy affected: %v", err)
			}
		})
	}
	if !ts.logs.contains("level=WARN msg=\"zds: proxy connection closed\"") {
		t.Error("malformed input not logged as a warning")
	}
}

// An Add that races a proxy's connection reaches it exactly once: in the replay or after it.
func TestAddRacingConnect(t *testing.T) {
	ts := startServer(t, nil)
	h := newFakeHandler()
	const n = 100
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		w := workload(t, fmt.Sprintf("w%03d", i))
		wg.Go(func() {
			<-start
			if err := ts.Add(t.Context(), w); err != nil && !errors.Is(err, ErrNoProxy) {
				t.Errorf("Add: %v", err)
			}
		})
	}
	close(start)
	startClient(t, ts.path, "racer", h)
	wg.Wait()
	testutil.Eventually(t, waitFor, "every workload added", func() bool {
		adds := 0
		for _, e := range h.seen() {
			if strings.HasPrefix(e, "add ") {
				adds++
			}
		}
		return adds >= n && slices.ContainsFunc(h.seen(), func(e string) bool { return strings.HasPrefix(e, "snapshot") })
	})
	count := map[string]int{}
	for _, e := range h.seen() {
		if uid, ok := strings.CutPrefix(e, "add "); ok {
			count[uid]++
		}
	}
	for uid, c := range count {
		if c != 1 {
			t.Errorf("%s added %d times", uid, c)
		}
	}
	if len(count) != n {
		t.Errorf("%d distinct workloads added, want %d", len(count), n)
	}
}

func TestRunSocketFile(t *testing.T) {
	path := t.TempDir() + "/zds.sock"
	// A stale socket, as a crashed agent leaves it.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)

	cfg := DefaultServerConfig()
	cfg.Path = path
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runBackground(t, "Run", s.Run)
	rawProxy(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}

	// Not a socket: refused, left alone.
	regular := t.TempDir() + "/file"
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Path = regular
	s2, _ := NewServer(cfg)
	if err := s2.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Run on a regular file: %v", err)
	}
	if _, err := os.Stat(regular); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	okServer := DefaultServerConfig()
	okServer.Path = "/x"
	okClient := DefaultClientConfig()
	okClient.Path, okClient.Node, okClient.Handler = "/x", "n", newFakeHandler()
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"server ok", okServer.Validate(), nil},
		{"server empty", ServerConfig{}.Validate(), []string{"path: must be set", "AckTimeout 0s: must be positive"}},
		{"client ok", okClient.Validate(), nil},
		{"client empty", ClientConfig{}.Validate(), []string{
			"path: must be set", "node: must be set", "handler: must be set",
			"Backoff.Initial 0s: must be positive",
		}},
		{"client backoff", func() error {
			c := okClient
			c.Backoff.Max = time.Nanosecond
			return c.Validate()
		}(), []string{"Backoff.Max 1ns: must be at least Backoff.Initial"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			if tt.err != nil {
				got = strings.Split(tt.err.Error(), "\n")
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}
