package kubelet

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

func TestContainerPrivileges(t *testing.T) {
	yes, no := true, false
	def := uint64(0)
	for _, n := range defaultCaps {
		def |= 1 << capNames[n]
	}
	caps := func(add []corev1.Capability, drop ...corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: add, Drop: drop}}
	}
	for _, tc := range []struct {
		name     string
		sc       *corev1.SecurityContext
		bounding uint64
		all      bool
		nnp      bool
		err      string
	}{
		{name: "nothing set: the runtime's defaults", bounding: def},
		{name: "privileged keeps everything", sc: &corev1.SecurityContext{Privileged: &yes}, all: true},
		{name: "add and drop", sc: caps([]corev1.Capability{"NET_ADMIN", "CAP_BPF"}, "NET_RAW", "chown"),
			bounding: (def | 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_BPF) &^ (1<<unix.CAP_NET_RAW | 1<<unix.CAP_CHOWN)},
		{name: "drop ALL, add one", sc: caps([]corev1.Capability{"NET_BIND_SERVICE"}, "ALL"), bounding: 0},
		{name: "add ALL", sc: caps([]corev1.Capability{"ALL"}), bounding: 1<<(unix.CAP_LAST_CAP+1) - 1},
		{name: "no escalation", sc: &corev1.SecurityContext{AllowPrivilegeEscalation: &no}, bounding: def, nnp: true},
		{name: "an unknown capability", sc: caps([]corev1.Capability{"NET_ADMN"}), err: `unknown capability "NET_ADMN"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := containerPrivileges(&corev1.Container{SecurityContext: tc.sc})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.all != (p.Bounding == nil) || (!tc.all && *p.Bounding != tc.bounding) || p.NoNewPrivs != tc.nnp {
				t.Errorf("got bounding %v (%#x), nnp %v; want all %v, %#x, nnp %v", p.Bounding == nil, deref(p.Bounding), p.NoNewPrivs, tc.all, tc.bounding, tc.nnp)
			}
		})
	}
}

func deref(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

func TestSetprivArgs(t *testing.T) {
	set := uint64(1<<unix.CAP_CHOWN | 1<<unix.CAP_NET_ADMIN)
	got := strings.Join(Privileges{Bounding: &set, NoNewPrivs: true}.setprivArgs(), " ")
	if want := "--no-new-privs --bounding-set=-all,+chown,+net_admin --inh-caps=-all"; got != want {
		t.Errorf("setpriv args %q, want %q", got, want)
	}
	if got := (Privileges{}).setprivArgs(); len(got) != 0 {
		t.Errorf("privileged: %q, want none", got)
	}
}
