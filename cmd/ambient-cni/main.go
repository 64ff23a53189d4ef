// Command ambient-cni is the mesh's chained CNI plugin: the node agent installs it, and the
// container runtime runs it for every new pod sandbox.
package main

import "github.com/ambient-mesh/ambient/redirect/cni"

func main() { cni.Main() }
