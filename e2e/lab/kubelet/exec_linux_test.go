package kubelet

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestExecCommand checks which program an exec runs: a command the container's image ships
// (echo-advanced's client) is played by the image's program with the whole command as its
// arguments; any other name resolves as before (image programs, then PATH), and a path is
// taken as it is.
func TestExecCommand(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"echo-advanced", "client", "echo"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH")
	}
	k := &Kubelet{cfg: Config{BinDir: filepath.Join(t.TempDir(), "empty") + ":" + bin}}
	const suiteImage = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"
	url := "http://echo:80/"
	for _, tc := range []struct {
		name, image string
		cmd         []string
		prog        string
		args        []string
	}{
		{"the image's client", suiteImage, []string{"client", url, "--method=GET"},
			filepath.Join(bin, "echo-advanced"), []string{"client", url, "--method=GET"}},
		{"by digest", "registry.k8s.io/gateway-api/echo-advanced@sha256:abcd", []string{"client", url},
			filepath.Join(bin, "echo-advanced"), []string{"client", url}},
		{"another image: the lab's client", "ambient/echo", []string{"client", "tcp", "echo:9090"},
			filepath.Join(bin, "client"), []string{"tcp", "echo:9090"}},
		{"a path is taken as it is", suiteImage, []string{"/usr/bin/client", url}, "/usr/bin/client", []string{url}},
		{"a command the image does not ship", suiteImage, []string{"echo", "-n"}, filepath.Join(bin, "echo"), []string{"-n"}},
		{"from PATH", suiteImage, []string{"sh", "-c", "true"}, sh, []string{"-c", "true"}},
		{"no image", "", []string{"client"}, filepath.Join(bin, "client"), []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prog, args, err := k.execCommand(tc.image, tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if prog != tc.prog {
				t.Errorf("program = %s, want %s", prog, tc.prog)
			}
			if d := cmp.Diff(tc.args, args); d != "" {
				t.Errorf("arguments (-want +got):\n%s", d)
			}
		})
	}
	if _, _, err := k.execCommand(suiteImage, nil); err == nil {
		t.Error("no command: want an error")
	}
	// The image's program missing: an error naming it, not the lab's client in its place.
	k.cfg.BinDir = t.TempDir()
	if prog, _, err := k.execCommand(suiteImage, []string{"client", url}); err == nil {
		t.Errorf("echo-advanced missing: ran %s, want an error", prog)
	}
}
