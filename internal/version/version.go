// Package version is the version every binary of the mesh reports (ambientctl version, the
// components' /debug/status): the release set at link time with
// -X github.com/ambient-mesh/ambient/internal/version.Release=..., else "dev" with the commit the
// binary was built from, when the build recorded it.
package version

import "runtime/debug"

// Release is set at link time for a release build.
var Release = ""

// String returns the version of this binary.
func String() string {
	if Release != "" {
		return Release
	}
	v := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			v += "-" + rev + dirty
		}
	}
	return v
}
