package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
)

// cpuProfile is a profile of 1 s of CPU: 0.5 s in a read system call under ztunnel's relay,
// 0.3 s encrypting, 0.2 s in the GC's mark worker.
func cpuProfile() *profile.Profile {
	p := &profile.Profile{SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		DurationNanos: 2e9}
	loc := func(names ...string) []*profile.Location {
		var out []*profile.Location
		for _, n := range names {
			fn := &profile.Function{ID: uint64(len(p.Function) + 1), Name: n}
			p.Function = append(p.Function, fn)
			l := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: fn}}}
			p.Location = append(p.Location, l)
			out = append(out, l)
		}
		return out
	}
	p.Sample = []*profile.Sample{
		{Location: loc("internal/runtime/syscall/linux.Syscall6", "syscall.read", "github.com/ambient-mesh/ambient/ztunnel/hbone.copyFromSocket"), Value: []int64{50, 5e8}},
		{Location: loc("crypto/internal/fips140/aes/gcm.seal", "crypto/tls.(*Conn).Write"), Value: []int64{30, 3e8}},
		{Location: loc("runtime.scanobject", "runtime.gcDrain", "runtime.gcBgMarkWorker"), Value: []int64{20, 2e8}},
	}
	return p
}

// writeCPUProfile writes cpuProfile at path.
func writeCPUProfile(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cpuProfile().Write(f); err != nil {
		t.Fatal(err)
	}
}

func TestSummarizeProfiles(t *testing.T) {
	dir := t.TempDir()
	writeCPUProfile(t, ProfilePath(dir, ClientSide, ProfileMax))
	got, err := SummarizeProfiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d summaries, want the one profile present", len(got))
	}
	s := got[0]
	if s.Side != ClientSide || s.Total != "1.00 s of CPU in 2 s" {
		t.Errorf("side %q total %q", s.Side, s.Total)
	}
	want := []Share{
		{"system calls (the kernel's share: TCP, veth, epoll, futex)", 50},
		{"cryptography (TLS records, handshakes)", 30},
		{"garbage collection", 20},
	}
	if len(s.Groups) != len(want) {
		t.Fatalf("groups %+v, want %+v", s.Groups, want)
	}
	for i := range want {
		if s.Groups[i].Name != want[i].Name || s.Groups[i].Percent != want[i].Percent {
			t.Errorf("group %d: %+v, want %+v", i, s.Groups[i], want[i])
		}
	}
	if s.Top[0].Name != "internal/runtime/syscall/linux.Syscall6" {
		t.Errorf("top function %q", s.Top[0].Name)
	}

	var md strings.Builder
	if err := (Report{L4: sampleRun(), Profiles: got}).WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "CPU at the maximum request rate**, client side (1.00 s of CPU in 2 s): system calls") {
		t.Errorf("report lacks the profile:\n%s", md.String())
	}
}

func TestSummarizeRefusesOtherProfiles(t *testing.T) {
	p := &profile.Profile{SampleType: []*profile.ValueType{{Type: "goroutine", Unit: "count"}}}
	if _, err := summarize(p); err == nil {
		t.Error("a goroutine profile was summarized as CPU or heap")
	}
}

func TestSummarizeWaypointProfile(t *testing.T) {
	dir := t.TempDir()
	if s, err := SummarizeWaypointProfile(dir); s != nil || err != nil {
		t.Fatalf("with no profile: %+v, %v; want nil, nil", s, err)
	}
	writeCPUProfile(t, WaypointProfilePath(dir, ProfileRate))
	s, err := SummarizeWaypointProfile(dir)
	if err != nil || s == nil || s.Total != "1.00 s of CPU in 2 s" {
		t.Fatalf("SummarizeWaypointProfile = %+v, %v", s, err)
	}
	var md strings.Builder
	lab := BenchFile{Name: "lab", Results: []GoBench{{Name: "Waypoint", Metrics: []Metric{{Value: 0.2, Unit: "waypoint-cores"}}}}}
	if err := (Report{L4: sampleRun(), Lab: []BenchFile{lab}, Waypoint: s}).WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "Where the waypoint's time goes, from its CPU profile in BenchmarkWaypoint's first round (`e2e/bench/results/profiles/waypoint.cpu-rate.pprof`; 1.00 s of CPU in 2 s): system calls") {
		t.Errorf("report lacks the waypoint's profile:\n%s", md.String())
	}
}
