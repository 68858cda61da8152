package server

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestEmbeddedDescriptorsMatchGen checks that descriptor.binpb describes
// the same API as the code in gen/, but for its comments: both are
// generated from proto/ (make generate), and a stale one would document
// another API than the one served.
func TestEmbeddedDescriptorsMatchGen(t *testing.T) {
	files, err := documentedFiles()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	files.own.RangeFiles(func(embedded protoreflect.FileDescriptor) bool {
		n++
		compiled, err := protoregistry.GlobalFiles.FindFileByPath(embedded.Path())
		if err != nil {
			t.Errorf("%s is embedded but not compiled into gen/: %v", embedded.Path(), err)
			return true
		}
		want, got := protodesc.ToFileDescriptorProto(compiled), protodesc.ToFileDescriptorProto(embedded)
		got.SourceCodeInfo = nil
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: the embedded descriptor differs from gen/'s (run make generate):\n%s", embedded.Path(), diff)
		}
		return true
	})
	if n == 0 {
		t.Error("descriptor.binpb holds no file")
	}
}
