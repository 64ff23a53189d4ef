package redirect

// The committed redirect_bpfel.go and redirect_bpfel.o are reproduced byte for byte by
// `go generate ./redirect/...` with Debian's clang and libbpf-dev: fixed flags, one target
// (little-endian BPF: every node we run on is), DWARF stripped by bpf2go and no host paths in
// the object (bpf2go maps the source directory to a relative one). bpf/uapi.h stands in for
// kernel headers, so nothing depends on the build host's kernel.
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel redirect bpf/redirect.c
