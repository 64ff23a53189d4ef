package xds

import (
	"context"

	"google.golang.org/grpc/metadata"
)

type callerCreds string

func (c callerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"caller": string(c)}, nil
}

func (callerCreds) RequireTransportSecurity() bool { return false }

func metadataFrom(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("caller")
	if len(v) != 1 {
		return "", false
	}
	return v[0], true
}
