package server

import (
	_ "embed"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	v1reflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphareflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// descriptorSet is buildlog's proto files as `buf build --exclude-imports`
// compiles them, comments included (make generate writes it; CI checks it
// is fresh). The descriptors compiled into gen/ carry no comments, so
// reflection serves these instead: `grpcurl describe` then shows the API's
// documentation.
//
//go:embed descriptor.binpb
var descriptorSet []byte

// registerReflection serves gRPC server reflection, v1 and v1alpha, with
// buildlog's own files described from descriptorSet and every other file
// (their imports, health, reflection itself) from the compiled registry.
func registerReflection(s *grpc.Server) error {
	files, err := documentedFiles()
	if err != nil {
		return err
	}
	opts := reflection.ServerOptions{Services: s, DescriptorResolver: files}
	v1reflectiongrpc.RegisterServerReflectionServer(s, reflection.NewServerV1(opts))
	v1alphareflectiongrpc.RegisterServerReflectionServer(s, reflection.NewServer(opts))
	return nil
}

// documentedFiles builds the resolver of descriptorSet's files, their
// imports resolved from the compiled registry.
func documentedFiles() (*layeredFiles, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(descriptorSet, &set); err != nil {
		return nil, fmt.Errorf("read the embedded proto descriptors: %w", err)
	}
	own := &layeredFiles{own: new(protoregistry.Files)}
	for _, fd := range set.GetFile() { // buf writes them in dependency order
		f, err := protodesc.NewFile(fd, own)
		if err != nil {
			return nil, fmt.Errorf("read the embedded proto descriptor of %s: %w", fd.GetName(), err)
		}
		if err := own.own.RegisterFile(f); err != nil {
			return nil, err
		}
	}
	return own, nil
}

// layeredFiles resolves from its own files first, then from the compiled
// registry.
type layeredFiles struct{ own *protoregistry.Files }

func (l *layeredFiles) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if f, err := l.own.FindFileByPath(path); err == nil {
		return f, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (l *layeredFiles) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := l.own.FindDescriptorByName(name); err == nil {
		return d, nil
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}
