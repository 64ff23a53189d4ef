package identity

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/bookinfo", want: Identity{"cluster.local", "default", "bookinfo"}},
		{in: "spiffe://td/ns/a.b-c_d/sa/X1", want: Identity{"td", "a.b-c_d", "X1"}},
		{in: "", wantErr: true},
		{in: "http://cluster.local/ns/a/sa/b", wantErr: true},
		{in: "spiffe://cluster.local", wantErr: true},
		{in: "spiffe:///ns/a/sa/b", wantErr: true},
		{in: "spiffe://Cluster.local/ns/a/sa/b", wantErr: true},
		{in: "spiffe://td:8080/ns/a/sa/b", wantErr: true},
		{in: "spiffe://user@td/ns/a/sa/b", wantErr: true},
		{in: "spiffe://td/ns/a/sa/b/", wantErr: true},
		{in: "spiffe://td/ns/a/sa/b?x=1", wantErr: true},
		{in: "spiffe://td/ns/a/sa/b#f", wantErr: true},
		{in: "spiffe://td/ns/../sa/b", wantErr: true},
		{in: "spiffe://td/ns/a%2F/sa/b", wantErr: true},
		{in: "spiffe://td/ns//sa/b", wantErr: true},
		{in: "spiffe://td/sa/b/ns/a", wantErr: true},
		{in: "spiffe://td/ns/a/sa/b/extra/x", wantErr: true},
		{in: "spiffe://td/ns/a/sa/" + strings.Repeat("x", maxLen), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("Parse(%q) error %v does not wrap ErrInvalid", tt.in, err)
				}
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
			u, err := url.Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			fromURL, err := FromURL(u)
			if err != nil {
				t.Fatalf("FromURL: %v", err)
			}
			if diff := cmp.Diff(got, fromURL); diff != "" {
				t.Errorf("FromURL mismatch (-Parse +FromURL):\n%s", diff)
			}
			if s := got.URL().String(); s != tt.in {
				t.Errorf("URL() = %q, want %q", s, tt.in)
			}
		})
	}
}

func TestValidateJoinsErrors(t *testing.T) {
	err := Identity{TrustDomain: "", Namespace: "..", ServiceAccount: "a/b"}.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want errors")
	}
	for _, want := range []string{"trust domain", "namespace", "service account"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q, want it to mention %q", err, want)
		}
	}
	if !(Identity{}).IsZero() {
		t.Error("zero Identity is not IsZero")
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts formats back to the same
// string and re-parses to the same value.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/default",
		"spiffe://td/ns/a/sa/b?x",
		"spiffe://td/ns/%2e/sa/b",
		"spiffe://TD/ns/a/sa/b",
		"spiffe://td/ns/a/sa/b/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id.String())
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) accepted an identity that does not validate: %v", s, err)
		}
		again, err := FromURL(id.URL())
		if err != nil || again != id {
			t.Fatalf("FromURL(URL()) = %v, %v; want %v", again, err, id)
		}
	})
}
