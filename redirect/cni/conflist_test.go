package cni

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", os.Getenv("UPDATE_GOLDEN") != "", "rewrite golden files")

var entry = PluginConf{Type: PluginType, AgentSocket: "/var/run/ambient/cni.sock", TimeoutSeconds: 30}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

func TestConflistEdits(t *testing.T) {
	orig, err := os.ReadFile("testdata/bridge.conflist")
	if err != nil {
		t.Fatal(err)
	}
	inserted, err := InsertPlugin(orig, entry)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bridge.inserted.golden", inserted)

	again, err := InsertPlugin(inserted, entry)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(inserted), string(again)); diff != "" {
		t.Errorf("inserting twice changed the list:\n%s", diff)
	}
	changed := entry
	changed.TimeoutSeconds = 5
	replaced, err := InsertPlugin(inserted, changed)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bridge.replaced.golden", replaced)

	removed, err := RemovePlugin(inserted, PluginType)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bridge.removed.golden", removed)
	if has, _ := HasPlugin(removed, PluginType); has {
		t.Error("HasPlugin after RemovePlugin = true")
	}
	if has, _ := HasPlugin(inserted, PluginType); !has {
		t.Error("HasPlugin after InsertPlugin = false")
	}
}

func TestConflistErrors(t *testing.T) {
	for name, in := range map[string]string{
		"not json":         `{"plugins": [`,
		"single plugin":    `{"cniVersion":"1.0.0","name":"x","type":"bridge"}`,
		"plugins not list": `{"plugins": {"type":"bridge"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := InsertPlugin([]byte(in), entry); err == nil {
				t.Errorf("InsertPlugin(%s) succeeded", in)
			}
		})
	}
}

func TestInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	confDir, binDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin")
	for _, d := range []string{confDir, binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "ambient-cni")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(confDir, binDir, bin, entry); err == nil {
		t.Fatal("Install with no conflist succeeded")
	}
	orig, _ := os.ReadFile("testdata/bridge.conflist")
	// Two lists: the runtime uses the first in lexical order, and so does Install.
	if err := os.WriteFile(filepath.Join(confDir, "10-bridge.conflist"), orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "20-other.conflist"), orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := Install(confDir, binDir, bin, entry); err != nil || !changed {
		t.Fatalf("Install = %v, %v; want true, nil", changed, err)
	}
	if changed, err := Install(confDir, binDir, bin, entry); err != nil || changed {
		t.Fatalf("second Install = %v, %v; want false, nil", changed, err)
	}
	first, _ := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist"))
	golden(t, "bridge.inserted.golden", first)
	if second, _ := os.ReadFile(filepath.Join(confDir, "20-other.conflist")); string(second) != string(orig) {
		t.Error("Install touched a conflist the runtime does not use")
	}
	if st, err := os.Stat(filepath.Join(binDir, PluginType)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, %v", st, err)
	}
	if err := Uninstall(confDir, binDir, PluginType); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(confDir, binDir, PluginType); err != nil {
		t.Fatalf("second Uninstall: %v", err)
	}
	restored, _ := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist"))
	golden(t, "bridge.removed.golden", restored)
	if _, err := os.Stat(filepath.Join(binDir, PluginType)); !os.IsNotExist(err) {
		t.Errorf("binary left after Uninstall: %v", err)
	}
	ents, _ := os.ReadDir(confDir)
	if len(ents) != 2 {
		t.Errorf("conf dir holds %d entries, want the 2 lists (no temporary files)", len(ents))
	}
}

// TestPrimaryConflist follows the runtime's choice: the first .conf, .conflist or .json, in
// lexical order; a single-plugin file first cannot be chained to.
func TestPrimaryConflist(t *testing.T) {
	dir := t.TempDir()
	list, _ := os.ReadFile("testdata/bridge.conflist")
	os.WriteFile(filepath.Join(dir, "10-b.conflist"), list, 0o644)
	os.WriteFile(filepath.Join(dir, "20-a.json"), list, 0o644)
	os.WriteFile(filepath.Join(dir, "ambient-cni.credentials"), []byte("{}"), 0o600)
	if got, err := PrimaryConflist(dir); err != nil || filepath.Base(got) != "10-b.conflist" {
		t.Errorf("PrimaryConflist = %s, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, "05-list.json"), list, 0o644)
	if got, err := PrimaryConflist(dir); err != nil || filepath.Base(got) != "05-list.json" {
		t.Errorf("a list in a .json sorted first: PrimaryConflist = %s, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, "01-single.conf"), []byte(`{"cniVersion":"1.0.0","name":"x","type":"bridge"}`), 0o644)
	if got, err := PrimaryConflist(dir); err == nil {
		t.Errorf("a single-plugin .conf first: PrimaryConflist = %s, want an error", got)
	}
}
