package cni

// Conflist edits. The node's primary network owns its configuration list; the agent only appends
// its own entry at the end of the chain (so that the previous result holds the pod's addresses)
// and removes it again, leaving every other byte of meaning alone: the other plugins' entries
// are kept as they were written, only re-indented.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// PluginType is the plugin's "type" in a conflist, and so the name of its binary.
const PluginType = "ambient-cni"

// PluginConf is the plugin's entry in the conflist.
type PluginConf struct {
	Type string `json:"type"`
	// AgentSocket is the node agent's unix socket, as a path on the node.
	AgentSocket string `json:"agentSocket"`
	// TimeoutSeconds bounds how long ADD waits for the agent to set the pod up.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// APIAccess is the credentials file of the plugin's fallback (see APIAccess).
	APIAccess string `json:"apiAccess,omitempty"`
}

// ErrNoConflist is returned when the CNI configuration directory holds no configuration list:
// the node's primary network is not installed yet, and there is nothing to chain to.
var ErrNoConflist = errors.New("no CNI configuration list")

// PrimaryConflist returns the configuration list a runtime uses: the first file ending in
// .conf, .conflist or .json in the directory, in lexical order (as kubelet and containerd pick
// it). A single-plugin .conf first is an error: the plugin cannot be chained to it, and chaining
// it into a later list would never run.
func PrimaryConflist(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("read CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() && (strings.HasSuffix(n, ".conflist") || strings.HasSuffix(n, ".conf") || strings.HasSuffix(n, ".json")) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%s: %w", dir, ErrNoConflist)
	}
	slices.Sort(names)
	path := filepath.Join(dir, names[0])
	if !strings.HasSuffix(path, ".conflist") {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		if _, err := editPlugins(b, func(p []json.RawMessage) ([]json.RawMessage, error) { return p, nil }); err != nil {
			return "", fmt.Errorf("the node's network configuration %s is a single-plugin file: ambient-cni cannot be chained to it", path)
		}
	}
	return path, nil
}

// InsertPlugin returns the conflist with entry as its last plugin; an existing entry of the
// same type is replaced (and moved to the end), so inserting twice changes nothing.
func InsertPlugin(conflist []byte, entry PluginConf) ([]byte, error) {
	raw, err := json.Marshal(entry)
	if err != nil {
		return nil, err
	}
	return editPlugins(conflist, func(plugins []json.RawMessage) ([]json.RawMessage, error) {
		return append(withoutType(plugins, entry.Type), raw), nil
	})
}

// RemovePlugin returns the conflist without any plugin of the given type.
func RemovePlugin(conflist []byte, typ string) ([]byte, error) {
	return editPlugins(conflist, func(plugins []json.RawMessage) ([]json.RawMessage, error) {
		return withoutType(plugins, typ), nil
	})
}

// HasPlugin reports whether the conflist chains a plugin of the given type.
func HasPlugin(conflist []byte, typ string) (bool, error) {
	var found bool
	_, err := editPlugins(conflist, func(plugins []json.RawMessage) ([]json.RawMessage, error) {
		found = len(withoutType(plugins, typ)) != len(plugins)
		return plugins, nil
	})
	return found, err
}

func withoutType(plugins []json.RawMessage, typ string) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(plugins)+1)
	for _, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(p, &t) == nil && t.Type == typ {
			continue
		}
		out = append(out, p)
	}
	return out
}

func editPlugins(conflist []byte, edit func([]json.RawMessage) ([]json.RawMessage, error)) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(conflist, &top); err != nil {
		return nil, fmt.Errorf("parse conflist: %w", err)
	}
	var plugins []json.RawMessage
	if p, ok := top["plugins"]; !ok {
		return nil, errors.New("parse conflist: no plugins list (a single-plugin .conf is not supported)")
	} else if err := json.Unmarshal(p, &plugins); err != nil {
		return nil, fmt.Errorf("parse conflist plugins: %w", err)
	}
	plugins, err := edit(plugins)
	if err != nil {
		return nil, err
	}
	p, err := json.Marshal(plugins)
	if err != nil {
		return nil, err
	}
	top["plugins"] = p
	out, err := json.Marshal(top) // keys sorted: the output does not depend on map order
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// Install copies the plugin binary into binDir and chains entry into the primary conflist of
// confDir. Both writes are atomic (a temporary file renamed into place), so a runtime reading
// either at the same moment sees the old or the new file, never half of one. It reports whether
// the conflist changed.
func Install(confDir, binDir, binary string, entry PluginConf) (bool, error) {
	if err := installBinary(binary, filepath.Join(binDir, entry.Type)); err != nil {
		return false, fmt.Errorf("install CNI binary: %w", err)
	}
	path, err := PrimaryConflist(confDir)
	if err != nil {
		return false, err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	updated, err := InsertPlugin(old, entry)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(old, updated) {
		return false, nil
	}
	if err := writeAtomic(path, updated, 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

// Uninstall removes the plugin's entry from every conflist in confDir and its binary from
// binDir. It is safe to repeat.
func Uninstall(confDir, binDir, typ string) error {
	ents, err := os.ReadDir(confDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read CNI conf dir: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".conflist") {
			continue
		}
		path := filepath.Join(confDir, e.Name())
		old, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if has, err := HasPlugin(old, typ); err != nil || !has {
			continue // not ours to touch, parseable or not
		}
		updated, err := RemovePlugin(old, typ)
		if err == nil {
			err = writeAtomic(path, updated, 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if err := os.Remove(filepath.Join(binDir, typ)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func installBinary(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, b) {
		return nil
	}
	return writeAtomic(dst, b, 0o755)
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, mode)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
