// gRPC: Istio's echo service, proto.EchoTestService with Echo and ForwardEcho, without Istio's
// generated code. The messages are described at run time (descriptorpb → protodesc → dynamicpb),
// field for field as istio.io/istio pkg/test/echo/proto/echo.proto numbers them, so the bytes on
// the wire are those of the real image; ForwardEchoRequest carries only the fields this client
// implements (unknown ones a caller sends are kept as unknown fields and ignored). The
// descriptors are not put into the global registry, so they can't clash with a linked-in copy.
// Rules it keeps:
//   - Echo answers with the "Key=Value" lines of fields.go in EchoResponse.message: each incoming
//     metadata entry as RequestHeader=key:value (sorted, "-bin" keys left out), :authority also
//     as Host=, then StatusCode=200, ServiceVersion, ServicePort, IP, Proto=GRPC, Echo=<message>
//     and Hostname;
//   - ForwardEcho runs the request as the client command would and returns its per-request
//     outputs;
//   - the client calls Echo and prints the answer's lines as "[i body] ..." lines (the status
//     code the suite reads is the server's StatusCode=200).

package echoadvanced

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

const (
	echoService     = "proto.EchoTestService"
	echoMethod      = "/" + echoService + "/Echo"
	forwardEchoName = "ForwardEcho"
)

// echoProto holds the message descriptors of the echo service.
var echoProto = func() struct {
	echoReq, echoResp, fwdReq, fwdResp protoreflect.MessageDescriptor
} {
	typ := func(t descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto_Type { return &t }
	field := func(name string, num int32, t descriptorpb.FieldDescriptorProto_Type, msg string, repeated bool) *descriptorpb.FieldDescriptorProto {
		label := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
		if repeated {
			label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED
		}
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Type: typ(t), Label: &label}
		if msg != "" {
			f.TypeName = proto.String(msg)
		}
		return f
	}
	str, i32, i64, boolean := descriptorpb.FieldDescriptorProto_TYPE_STRING, descriptorpb.FieldDescriptorProto_TYPE_INT32,
		descriptorpb.FieldDescriptorProto_TYPE_INT64, descriptorpb.FieldDescriptorProto_TYPE_BOOL
	msg := func(name string, fields ...*descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fields}
	}
	file := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("ambient/echoadvanced/echo.proto"),
		Package: proto.String("proto"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			msg("EchoRequest", field("message", 1, str, "", false)),
			msg("EchoResponse", field("message", 1, str, "", false)),
			msg("Header", field("key", 1, str, "", false), field("value", 2, str, "", false)),
			msg("ForwardEchoRequest",
				field("count", 1, i32, "", false),
				field("qps", 2, i32, "", false),
				field("timeout_micros", 3, i64, "", false),
				field("url", 4, str, "", false),
				field("headers", 5, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".proto.Header", true),
				field("message", 6, str, "", false),
				field("http2", 7, boolean, "", false),
				field("method", 9, str, "", false),
				field("followRedirects", 14, boolean, "", false),
				field("insecureSkipVerify", 19, boolean, "", false),
				field("serverName", 20, str, "", false),
				field("newConnectionPerRequest", 22, boolean, "", false),
			),
			msg("ForwardEchoResponse", field("output", 1, str, "", true)),
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("EchoTestService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Echo"), InputType: proto.String(".proto.EchoRequest"), OutputType: proto.String(".proto.EchoResponse")},
				{Name: proto.String(forwardEchoName), InputType: proto.String(".proto.ForwardEchoRequest"), OutputType: proto.String(".proto.ForwardEchoResponse")},
			},
		}},
	}
	fd, err := protodesc.NewFile(file, new(protoregistry.Files))
	if err != nil {
		panic("echo proto: " + err.Error())
	}
	m := fd.Messages()
	return struct {
		echoReq, echoResp, fwdReq, fwdResp protoreflect.MessageDescriptor
	}{m.ByName("EchoRequest"), m.ByName("EchoResponse"), m.ByName("ForwardEchoRequest"), m.ByName("ForwardEchoResponse")}
}()

// getField reads a field of a dynamic message by name; setString sets a string field.
func getField(m protoreflect.Message, name string) protoreflect.Value {
	return m.Get(m.Descriptor().Fields().ByName(protoreflect.Name(name)))
}

func setString(m protoreflect.Message, name, v string) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), protoreflect.ValueOfString(v))
}

type grpcHandler struct {
	cfg  ServerConfig
	port int
}

func newGRPCServer(cfg ServerConfig, port int, useTLS bool, cert *tls.Certificate) *grpc.Server {
	var opts []grpc.ServerOption
	if useTLS {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})))
	}
	g := grpc.NewServer(opts...)
	unary := func(in protoreflect.MessageDescriptor, call func(*grpcHandler, context.Context, *dynamicpb.Message) (any, error)) grpc.MethodHandler {
		return func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			req := dynamicpb.NewMessage(in)
			if err := dec(req); err != nil {
				return nil, err
			}
			h := srv.(*grpcHandler)
			if ic == nil {
				return call(h, ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: echoMethod}
			return ic(ctx, req, info, func(ctx context.Context, r any) (any, error) { return call(h, ctx, r.(*dynamicpb.Message)) })
		}
	}
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: echoService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: unary(echoProto.echoReq, (*grpcHandler).echo)},
			{MethodName: forwardEchoName, Handler: unary(echoProto.fwdReq, (*grpcHandler).forwardEcho)},
		},
		Metadata: "test/echo/proto/echo.proto",
	}, &grpcHandler{cfg: cfg, port: port})
	healthpb.RegisterHealthServer(g, health.NewServer()) // "" is SERVING
	return g
}

func (h *grpcHandler) echo(ctx context.Context, req *dynamicpb.Message) (any, error) {
	var body bytes.Buffer
	md, _ := metadata.FromIncomingContext(ctx)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasSuffix(k, "-bin") {
			continue
		}
		for _, v := range md[k] {
			if k == ":authority" {
				writeField(&body, fieldHost, v)
			}
			writeField(&body, fieldRequestHeader, k+":"+v)
		}
	}
	ip := "0.0.0.0"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
			ip = host
		}
	}
	writeField(&body, fieldStatusCode, strconv.Itoa(http.StatusOK))
	writeField(&body, fieldServiceVersion, h.cfg.Version)
	writeField(&body, fieldServicePort, strconv.Itoa(h.port))
	writeNonEmpty(&body, fieldCluster, h.cfg.Cluster)
	writeNonEmpty(&body, fieldNamespace, h.cfg.Namespace)
	writeField(&body, fieldIP, ip)
	writeNonEmpty(&body, fieldIstioVersion, h.cfg.IstioVersion)
	writeField(&body, fieldProto, "GRPC")
	writeField(&body, fieldEcho, getField(req, "message").String())
	writeField(&body, fieldHostname, hostname())
	resp := dynamicpb.NewMessage(echoProto.echoResp)
	setString(resp, "message", body.String())
	return resp, nil
}

func (h *grpcHandler) forwardEcho(ctx context.Context, req *dynamicpb.Message) (any, error) {
	r := Request{
		URL:                     getField(req, "url").String(),
		Count:                   int(getField(req, "count").Int()),
		QPS:                     int(getField(req, "qps").Int()),
		Timeout:                 time.Duration(getField(req, "timeout_micros").Int()) * time.Microsecond,
		Message:                 getField(req, "message").String(),
		Method:                  getField(req, "method").String(),
		HTTP2:                   getField(req, "http2").Bool(),
		FollowRedirects:         getField(req, "followRedirects").Bool(),
		InsecureSkipVerify:      getField(req, "insecureSkipVerify").Bool(),
		ServerName:              getField(req, "serverName").String(),
		NewConnectionPerRequest: getField(req, "newConnectionPerRequest").Bool(),
	}
	hs := getField(req, "headers").List()
	for i := range hs.Len() {
		m := hs.Get(i).Message()
		r.Headers = append(r.Headers, Header{Name: getField(m, "key").String(), Value: getField(m, "value").String()})
	}
	out, err := Forward(ctx, r)
	if err != nil {
		return nil, err
	}
	resp := dynamicpb.NewMessage(echoProto.fwdResp)
	list := resp.Mutable(echoProto.fwdResp.Fields().ByName("output")).List()
	for _, o := range out {
		list.Append(protoreflect.ValueOfString(o))
	}
	return resp, nil
}

// dialGRPC opens the connection the client's gRPC requests share (or one request uses).
func dialGRPC(addr, authority string, tc *tls.Config) (*grpc.ClientConn, error) {
	creds := grpc.WithTransportCredentials(insecure.NewCredentials()) // h2c
	if tc != nil {
		creds = grpc.WithTransportCredentials(credentials.NewTLS(tc))
	}
	opts := []grpc.DialOption{creds}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	// passthrough: the address is dialed as given, resolved by the system resolver at each dial.
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

// callEcho makes request i: an Echo call carrying the request's headers as metadata.
func callEcho(ctx context.Context, conn *grpc.ClientConn, i int, r *Request, hdr http.Header, out *bytes.Buffer, active func() int64) error {
	md := metadata.MD{}
	for k, vs := range hdr {
		md.Append(k, vs...)
	}
	ctx = metadata.NewOutgoingContext(ctx, md)
	req := dynamicpb.NewMessage(echoProto.echoReq)
	setString(req, "message", r.Message)
	resp := dynamicpb.NewMessage(echoProto.echoResp)
	var respHdr metadata.MD
	start := time.Now()
	if err := conn.Invoke(ctx, echoMethod, req, resp, grpc.Header(&respHdr)); err != nil {
		return err
	}
	writeReqField(out, i, fieldLatency, time.Since(start).String())
	writeReqField(out, i, fieldActiveRequests, strconv.FormatInt(active(), 10))
	for _, line := range strings.Split(getField(resp, "message").String(), "\n") {
		if line != "" {
			writeBodyLine(out, i, line)
		}
	}
	keys := make([]string, 0, len(respHdr))
	for k := range respHdr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range respHdr[k] {
			writeReqField(out, i, fieldResponseHeader, k+":"+v)
		}
	}
	return nil
}
