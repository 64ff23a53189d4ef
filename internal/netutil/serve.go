package netutil

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// ServeHTTP serves each handler on its address (admin, metrics, readiness ports) until ctx ends,
// then closes them and returns nil. A port that cannot be served (the address is taken) ends
// them all with its error: a proxy without its readiness or metrics port must not look healthy.
func ServeHTTP(ctx context.Context, handlers map[string]http.Handler) error {
	errc := make(chan error, len(handlers))
	srvs := make([]*http.Server, 0, len(handlers))
	for addr, h := range handlers {
		s := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, s)
		go func() {
			if err := s.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", addr, err)
			}
		}()
	}
	defer func() {
		for _, s := range srvs {
			_ = s.Close()
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}
