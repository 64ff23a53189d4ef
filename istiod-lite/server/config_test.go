package server

import (
	"flag"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		errs   []string
	}{
		{"default with pod name", func(c *Config) { c.PodName = "p" }, nil},
		{"every problem reported", func(c *Config) {
			c.Namespace, c.GRPCAddr, c.DebounceQuiet = "", "nope", 0
			c.Model.TrustDomain = "other"
		}, []string{"namespace is empty", `grpc address "nope"`, "debounce quiet", "leader election needs the pod name", "differs from the model"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
		})
	}
}

func TestFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	finish := c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--trust-domain=example.org", "--ztunnel-service-accounts=a/b, c/d", "--pod-name=p"}); err != nil {
		t.Fatal(err)
	}
	finish()
	if c.CA.TrustDomain != "example.org" || len(c.CA.ZtunnelServiceAccounts) != 2 || c.CA.ZtunnelServiceAccounts[1] != "c/d" {
		t.Errorf("config after flags: %+v", c.CA)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}
