// The Gateway API conformance suite's own parser (sigs.k8s.io/gateway-api/conformance,
// utils/echo), run on the client's output: the formats match because the suite says so, not
// because this package agrees with itself. A --count batch is split as the suite's unexported
// parseMultipleResponses does: on blank lines, each section parsed with ParseResponse.

package echoadvanced

import (
	"net/http"
	"strings"
	"testing"

	suiteecho "sigs.k8s.io/gateway-api/conformance/utils/echo"
)

// parsed is the part of the suite's echo.Response the tests read.
type parsed struct {
	Code, Hostname, Host, URL, Method, Protocol, Alpn, Version, Port, IP, Cluster, ID string
	RequestHeaders, ResponseHeaders                                                   http.Header
	Body                                                                              []string
}

func conv(r suiteecho.Response) parsed {
	return parsed{r.Code, r.Hostname, r.Host, r.URL, r.Method, r.Protocol, r.Alpn, r.Version, r.Port, r.IP, r.Cluster, r.ID,
		r.RequestHeaders, r.ResponseHeaders, r.Body()}
}

// suiteParse feeds output to the suite's parser (batch: one response per blank-line section).
func suiteParse(t *testing.T, output string, batch bool) []parsed {
	t.Helper()
	if !batch {
		return []parsed{conv(suiteecho.ParseResponse(output))}
	}
	var out []parsed
	for _, section := range strings.Split(output, "\n\n") {
		if section = strings.TrimSpace(section); section != "" {
			out = append(out, conv(suiteecho.ParseResponse(section)))
		}
	}
	return out
}
