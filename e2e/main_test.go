//go:build e2e

// Package e2e holds the end-to-end tests. They run on the lab: TestMain brings up a fresh
// two-node lab, the tests share it, and TestMain tears it down and checks that nothing the lab
// created is left on the machine.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/e2e/lab"
)

var labCfg lab.Config

// tokenMaxAge is the lab kubelets' token refresh age in the end-to-end tests.
const tokenMaxAge = 30 * time.Second

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "e2e: the lab needs root, and CI=true forbids skipping")
			return 1
		}
		fmt.Fprintln(os.Stderr, "e2e: skipped: the lab needs root (network namespaces, cgroups)")
		return 0
	}
	wd, _ := os.Getwd()
	root, err := lab.FindRoot(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	labCfg = lab.Default(root)
	// Every run refreshes the pods' tokens (a kubelet does it at 80% of their life, after an hour
	// at the earliest): the mesh must keep working across a refresh.
	labCfg.TokenMaxAge = tokenMaxAge
	if labCfg.ToolsDir, err = lab.BuildTools(root); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if _, err := os.Stat(filepath.Join(labCfg.BinDir, "lab")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: bin/lab missing; run make build first")
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "e2e")
	// One lab per machine: its names and addresses are fixed. A second test run (another
	// clone's CI, a benchmark) waits here for the first to finish instead of tearing its lab
	// down under it. The lock goes with the process, also when it crashes.
	unlock, err := lab.Lock(log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer unlock()
	// Start from a clean machine: a lab left by an earlier run is removed, not reused.
	if err := lab.Down(labCfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: clean earlier lab:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	start := time.Now()
	err = lab.Up(ctx, labCfg, log)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: lab up:", err)
		_ = lab.Down(labCfg, log)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: lab up in %s\n", time.Since(start).Round(time.Millisecond))
	code := m.Run()
	created, _ := os.ReadFile(labCfg.CreatedLog())
	if err := lab.Down(labCfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: lab down:", err)
		return 1
	}
	left := leftovers(root)
	mounts, err := lab.MountsUnder(labCfg.StateDir())
	if err != nil {
		left = append(left, "mountinfo: "+err.Error())
	}
	for _, mp := range mounts {
		left = append(left, "mount "+mp)
	}
	for _, p := range strings.Fields(string(created)) {
		if _, err := os.Stat(p); err == nil {
			left = append(left, "mount target "+p)
		}
	}
	if len(left) > 0 {
		fmt.Fprintln(os.Stderr, "e2e: lab down left behind:\n  "+strings.Join(left, "\n  "))
		return 1
	}
	return code
}

// leftovers lists what the lab created that is still on the machine: network namespaces,
// links, cgroups and processes (mounts under the state directory are checked beside it).
func leftovers(root string) []string {
	var left []string
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		n := e.Name()
		if n == lab.SwitchNetns || strings.HasPrefix(n, lab.NodeNetnsPref) || strings.HasPrefix(n, lab.PodNetnsPref) {
			left = append(left, "netns "+n)
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, " "+lab.HostVeth+"@") || strings.Contains(l, " "+lab.HostVeth+":") {
				left = append(left, "link "+lab.HostVeth)
			}
		}
	}
	if cg, err := lab.LabCgroup(); err == nil {
		if _, err := os.Stat(cg); err == nil {
			left = append(left, "cgroup "+cg)
		}
	}
	procs, _ := os.ReadDir("/proc")
	marker := []byte(lab.EnvMarker + "=" + root + "\x00")
	for _, p := range procs {
		env, err := os.ReadFile("/proc/" + p.Name() + "/environ")
		if err == nil && p.Name() != fmt.Sprint(os.Getpid()) && strings.Contains(string(env)+"\x00", string(marker)) {
			cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
			left = append(left, "process "+p.Name()+" "+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return left
}
