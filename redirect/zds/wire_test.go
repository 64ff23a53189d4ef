package zds

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
)

func marshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzDecode(f *testing.F) {
	for _, m := range []proto.Message{
		&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Add{Add: &zdsv1.AddWorkload{Workload: &zdsv1.WorkloadInfo{Uid: "u", Ips: []string{"10.0.0.1"}}, NetnsCookie: 7}}},
		&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Keep{Keep: &zdsv1.KeepWorkload{Uid: "u"}}},
		&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Del{Del: &zdsv1.DelWorkload{Uid: "u"}}},
		&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_SnapshotSent{SnapshotSent: &zdsv1.SnapshotSent{}}},
		&zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Hello{Hello: &zdsv1.Hello{Version: 1, Node: "n"}}},
		&zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Ack{Ack: &zdsv1.Ack{Error: "e"}}},
	} {
		f.Add(marshal(f, m), false)
		f.Add(marshal(f, m), true)
	}
	f.Add([]byte{0xff}, true)
	f.Fuzz(func(t *testing.T, b []byte, withFD bool) {
		fds := func() []int {
			if !withFD {
				return nil
			}
			// A raw fd, not an *os.File: decode takes it over, and no finaliser may close it again.
			fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return []int{fd}
		}

		raw := fds()
		m, netns, err := decodeAgent(b, raw)
		if err == nil {
			_, isAdd := m.Payload.(*zdsv1.AgentMessage_Add)
			if isAdd != (netns != nil) || isAdd != withFD {
				t.Fatalf("decodeAgent: add %v, netns %v, with fd %v", isAdd, netns != nil, withFD)
			}
			if isAdd && m.GetAdd().GetWorkload().GetUid() == "" {
				t.Fatal("decodeAgent accepted an add without uid")
			}
			if netns != nil {
				netns.Close()
			}
		}
		pm, err := decodeProxy(b, fds())
		if err == nil && (withFD || pm.Payload == nil) {
			t.Fatalf("decodeProxy accepted %v with fd %v", pm, withFD)
		}
	})
}
