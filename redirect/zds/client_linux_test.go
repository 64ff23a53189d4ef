package zds

import (
	"net"
	"os"
	"testing"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

// rawAgent listens where a client will connect, for tests that play the agent.
func rawAgent(t *testing.T) (*net.UnixListener, string) {
	t.Helper()
	path := t.TempDir() + "/zds.sock"
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

// accept takes the client's next connection and reads its Hello.
func accept(t *testing.T, ln *net.UnixListener) *net.UnixConn {
	t.Helper()
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	if h := readProxy(t, uc).GetHello(); h.GetVersion() != Version || h.GetNode() != "node-a" {
		t.Fatalf("first message %v, want Hello from node-a", h)
	}
	return uc
}

func addMsg(uid string) *zdsv1.AgentMessage {
	return &zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Add{Add: &zdsv1.AddWorkload{Workload: &zdsv1.WorkloadInfo{Uid: uid}}}}
}

func keepMsg(uid string) *zdsv1.AgentMessage {
	return &zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Keep{Keep: &zdsv1.KeepWorkload{Uid: uid}}}
}

var snapshotMsg = &zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_SnapshotSent{SnapshotSent: &zdsv1.SnapshotSent{}}}

// wantAck reads the client's ack and checks its error text.
func wantAck(t *testing.T, uc *net.UnixConn, want string) {
	t.Helper()
	a := readProxy(t, uc).GetAck()
	if a == nil || a.Error != want {
		t.Fatalf("got ack %v, want error %q", a, want)
	}
}

// The client acks in order, reports the replay, and after the agent goes away reconnects and
// gets a new replay.
func TestClientReplayAndReconnect(t *testing.T) {
	checkNoFDLeak(t)
	ln, path := rawAgent(t)
	h := newFakeHandler()
	h.setFail("bad", "cannot")
	startClient(t, path, "node-a", h)

	uc := accept(t, ln)
	send(t, uc, addMsg("a"), workload(t, "a").Netns)
	wantAck(t, uc, "")
	send(t, uc, addMsg("bad"), workload(t, "bad").Netns)
	wantAck(t, uc, "cannot")
	send(t, uc, keepMsg("k"))
	wantAck(t, uc, "")
	send(t, uc, snapshotMsg)
	wantAck(t, uc, "")
	send(t, uc, addMsg("late"), workload(t, "late").Netns)
	wantAck(t, uc, "")
	h.waitSeen(t, "add a", "add bad", "keep k", "snapshot a,bad,k", "add late")
	uc.Close() // the agent goes away

	uc = accept(t, ln)
	send(t, uc, keepMsg("a"))
	wantAck(t, uc, "")
	send(t, uc, snapshotMsg)
	wantAck(t, uc, "")
	h.waitSeen(t, "add a", "add bad", "keep k", "snapshot a,bad,k", "add late", "keep a", "snapshot a")
}

func TestClientMalformed(t *testing.T) {
	tests := []struct {
		name string
		act  func(t *testing.T, uc *net.UnixConn)
		log  string
	}{
		{"garbage", func(t *testing.T, uc *net.UnixConn) { send(t, uc, []byte{0xff, 0xff}) }, "malformed"},
		// Field 9, unknown: a message from the future with nothing this version knows.
		{"no known payload", func(t *testing.T, uc *net.UnixConn) { send(t, uc, []byte{0x48, 0x01}) }, "no known payload"},
		{"add without fd", func(t *testing.T, uc *net.UnixConn) { send(t, uc, addMsg("a")) }, "0 fds with a message that takes 1"},
		{"add with two fds", func(t *testing.T, uc *net.UnixConn) {
			send(t, uc, addMsg("a"), workload(t, "a").Netns, workload(t, "b").Netns)
		}, "2 fds with a message that takes 1"},
		{"add without uid", func(t *testing.T, uc *net.UnixConn) { send(t, uc, addMsg(""), workload(t, "a").Netns) }, "without a workload uid"},
		{"keep with fd", func(t *testing.T, uc *net.UnixConn) { send(t, uc, keepMsg("a"), workload(t, "a").Netns) }, "1 fds with a message that takes 0"},
		{"oversized", func(t *testing.T, uc *net.UnixConn) {
			send(t, uc, make([]byte, MaxMessageSize+1), workload(t, "a").Netns)
		}, "packet larger than"},
		{"too many fds", func(t *testing.T, uc *net.UnixConn) {
			var fs []*os.File
			for range oobFDs + 1 {
				fs = append(fs, workload(t, "x").Netns)
			}
			send(t, uc, addMsg("a"), fs...)
		}, "control data truncated"},
		{"second snapshot", func(t *testing.T, uc *net.UnixConn) {
			send(t, uc, snapshotMsg)
			wantAck(t, uc, "")
			send(t, uc, snapshotMsg)
		}, "second SnapshotSent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNoFDLeak(t)
			ln, path := rawAgent(t)
			logs := startClient(t, path, "node-a", newFakeHandler())
			uc := accept(t, ln)
			tt.act(t, uc)
			expectClosed(t, uc)
			testutil.Eventually(t, waitFor, "error logged", func() bool {
				return logs.contains(`level=WARN msg="zds: closing connection to the agent"`) && logs.contains(tt.log)
			})
			// The client comes back and works.
			uc = accept(t, ln)
			send(t, uc, keepMsg("probe"))
			wantAck(t, uc, "")
		})
	}
}
