package xds

import (
	"testing"
)

// Next reuses the serialised form of unchanged messages and serialises changed ones afresh.
func TestSnapshotNextReuses(t *testing.T) {
	m1 := scaleModel(10)
	s1, err := NewSnapshot(m1, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2 := changeOne(m1, 1)
	s2, err := s1.Next(m2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range s2.resources[TypeWorkload] {
		old := s1.resources[TypeWorkload][name]
		if name == "uid-7" {
			if r == old || r.version == old.version {
				t.Errorf("changed workload %s kept its old serialisation", name)
			}
			continue
		}
		if r != old {
			t.Errorf("unchanged workload %s was serialised again", name)
		}
	}
	if d := changed(s1, s2)[TypeWorkload]; len(d) != 1 {
		t.Errorf("changed workloads %v, want only uid-7", d)
	}
	// A snapshot built from scratch agrees with the incremental one.
	fresh, err := NewSnapshot(m2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range fresh.resources[TypeWorkload] {
		if s2.resources[TypeWorkload][name].version != r.version {
			t.Errorf("workload %s: incremental version %s, fresh %s", name, s2.resources[TypeWorkload][name].version, r.version)
		}
	}
}
