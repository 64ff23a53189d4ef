package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// ip runs the iproute2 ip command. It is the lab's one boundary to the kernel's network
// configuration, and it is only ever pointed at namespaces and links the lab named.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNetns runs a command inside a named network namespace.
func inNetns(netns string, args ...string) error {
	return ip(append([]string{"netns", "exec", netns}, args...)...)
}

func sysctlIn(netns, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return inNetns(netns, "sh", "-c", "echo "+value+" > "+path)
}

// setupNetwork creates the switch namespace with the lab bridge, the host-side veth, and one
// namespace per node with routes to every other node's pod CIDR.
func setupNetwork(nodes int) error {
	steps := [][]string{
		{"netns", "add", SwitchNetns},
		{"-n", SwitchNetns, "link", "set", "lo", "up"},
		{"-n", SwitchNetns, "link", "add", BridgeName, "type", "bridge"},
		{"-n", SwitchNetns, "addr", "add", APIServerIP + "/24", "dev", BridgeName},
		{"-n", SwitchNetns, "link", "set", BridgeName, "up"},
		{"link", "add", HostVeth, "type", "veth", "peer", "name", SwitchUplink, "netns", SwitchNetns},
		{"addr", "add", HostIP + "/24", "dev", HostVeth},
		{"link", "set", HostVeth, "up"},
		{"-n", SwitchNetns, "link", "set", SwitchUplink, "master", BridgeName, "up"},
	}
	for i := 1; i <= nodes; i++ {
		n := NodeAt(i)
		peer := "vnode" + strconv.Itoa(i)
		steps = append(steps,
			[]string{"netns", "add", n.Netns},
			[]string{"-n", n.Netns, "link", "set", "lo", "up"},
			[]string{"-n", SwitchNetns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
			[]string{"-n", SwitchNetns, "link", "set", peer, "master", BridgeName, "up"},
			[]string{"-n", n.Netns, "addr", "add", n.IP.String() + "/24", "dev", "eth0"},
			[]string{"-n", n.Netns, "link", "set", "eth0", "up"},
			[]string{"-n", SwitchNetns, "route", "add", n.PodCIDR.String(), "via", n.IP.String()},
		)
		for j := 1; j <= nodes; j++ {
			if j == i {
				continue
			}
			o := NodeAt(j)
			steps = append(steps, []string{"-n", n.Netns, "route", "add", o.PodCIDR.String(), "via", o.IP.String()})
		}
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("lab network: %w", err)
		}
	}
	if err := sysctlIn(SwitchNetns, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		if err := sysctlIn(NodeAt(i).Netns, "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	return nil
}

// labNetns lists the network namespaces the lab created.
func labNetns() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		n := e.Name()
		if n == SwitchNetns || strings.HasPrefix(n, NodeNetnsPref) || strings.HasPrefix(n, PodNetnsPref) {
			out = append(out, n)
		}
	}
	return out
}

// teardownNetwork deletes every namespace and link the lab created. Deleting a namespace
// destroys the veths in it, and with them their peers.
func teardownNetwork() []error {
	var errs []error
	for _, n := range labNetns() {
		if err := ip("netns", "del", n); err != nil {
			errs = append(errs, err)
		}
	}
	// The kernel destroys a deleted namespace, and the host veth with its peer, asynchronously:
	// the link can vanish between the check and the delete, which is not an error.
	if _, err := os.Stat("/sys/class/net/" + HostVeth); err == nil {
		if err := ip("link", "del", HostVeth); err != nil {
			if _, serr := os.Stat("/sys/class/net/" + HostVeth); serr == nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}
