package kubelet

import "testing"

func TestImageProgram(t *testing.T) {
	tests := []struct {
		image, want string
		wantErr     bool
	}{
		{image: "ambient/echo", want: "/b/echo"},
		{image: "ambient/echo:latest", want: "/b/echo"},
		{image: "registry.local:5000/ambient/client:v1", want: "/b/client"},
		{image: "ambient/ztunnel@sha256:abcd", want: "/b/ztunnel"},
		{image: "", wantErr: true},
		{image: "../../etc/passwd", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ImageProgram("/b", tt.image)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ImageProgram(%q) = %q, %v; want %q, err %v", tt.image, got, err, tt.want, tt.wantErr)
		}
	}
}
