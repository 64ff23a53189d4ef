package images

// What the echo image serves for L7 tests beyond its JSON echo: a WebSocket echo at /ws on its
// HTTP port (real framing, golang.org/x/net/websocket) and a gRPC server (the standard health
// service) on GRPCAddr, with their clients. They exist to prove that a waypoint carries Upgrade
// and gRPC (HTTP/2 with trailers) end to end.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// wsEcho echoes every WebSocket message back.
var wsEcho = websocket.Handler(func(c *websocket.Conn) { _, _ = io.Copy(c, c) })

// serveGRPC serves the health service (SERVING) on l.
func serveGRPC(l net.Listener) error {
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	err := s.Serve(l)
	if errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// WebSocketEcho opens a WebSocket to url (ws://...), sends msg and returns what came back.
func WebSocketEcho(ctx context.Context, url, msg string, timeout time.Duration) (string, error) {
	cfg, err := websocket.NewConfig(url, "http://localhost/")
	if err != nil {
		return "", err
	}
	cfg.Dialer = &net.Dialer{Timeout: timeout}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := cfg.DialContext(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := websocket.Message.Send(c, msg); err != nil {
		return "", err
	}
	var got string
	err = websocket.Message.Receive(c, &got)
	return got, err
}

// GRPCHealth calls the health service at addr and returns its status.
func GRPCHealth(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return "", fmt.Errorf("health check: %w", err)
	}
	return resp.GetStatus().String(), nil
}
