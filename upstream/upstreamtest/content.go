package upstreamtest

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Generated logs are lines of one fixed width, so the byte at any offset is
// computed directly and a log of any size is produced on the fly. Lines are
// built a page at a time from a template in which only the line numbers
// change, which makes generation about as fast as copying memory.
const (
	lineNumberDigits = 12
	pageLines        = 1024 // a multiple of len(phrases)
)

var phrases = [...]string{
	"Downloading dependencies from the mirror",
	"Compiling module core (warnings: 0)",
	"Running unit tests: 128 passed, 0 failed",
	"Packaging artifact build-output.tar.gz",
	"Uploading artifact to the release repository",
	"Resolving plugin versions",
	"Checking out source at commit 5f2c9a1",
	"Linking target bin/service",
	"Step finished in 1.204s",
	"Cache hit for key deps-linux-amd64",
	"Generating code from schema",
	"Formatting check passed",
	"Static analysis: no findings",
	"Building container layer 3/7",
	"Signing artifact with the project key",
	"Notifying subscribers of the build status",
}

// generator produces the deterministic text of one generated log.
type generator struct {
	size      int64
	width     int64  // bytes per line, newline included
	template  []byte // one page of lines, line-number digits blank
	numberAt  int    // offset of the digits within a line
	page      []byte // the page currently rendered
	pageIndex int64  // which page is in page, -1 for none
}

func newGenerator(size int64, level, taskName string) *generator {
	if len(taskName) > 32 {
		taskName = taskName[:32]
	}
	t := pageTemplate(level, taskName)
	return &generator{
		size:      size,
		width:     t.width,
		template:  t.page,
		numberAt:  t.numberAt,
		page:      make([]byte, len(t.page)),
		pageIndex: -1,
	}
}

// template is the page of lines that a task's logs at a level are rendered
// from. Templates are built once and shared: a request for a small log
// would otherwise spend most of its time building one.
type template struct {
	page     []byte // read-only
	width    int64
	numberAt int
}

// maxTemplates bounds the templates kept, for tests that make up many task
// names; a template past it is built for its request alone.
const maxTemplates = 64

var templates struct {
	sync.Mutex
	m map[[2]string]*template
}

func pageTemplate(level, taskName string) *template {
	key := [2]string{level, taskName}
	templates.Lock()
	t := templates.m[key]
	templates.Unlock()
	if t != nil {
		return t
	}
	prefix := fmt.Sprintf("[%-5s] %s line ", level, strings.ToValidUTF8(taskName, "?"))
	phraseWidth := 0
	for _, p := range phrases {
		phraseWidth = max(phraseWidth, len(p))
	}
	width := len(prefix) + lineNumberDigits + 3 + phraseWidth + 1
	page := make([]byte, 0, width*pageLines)
	for i := range pageLines {
		line := prefix + strings.Repeat("0", lineNumberDigits) + " | " + phrases[i%len(phrases)]
		line += strings.Repeat(" ", width-1-len(line)) + "\n"
		page = append(page, line...)
	}
	t = &template{page: page, width: int64(width), numberAt: len(prefix)}
	templates.Lock()
	defer templates.Unlock()
	if templates.m == nil {
		templates.m = make(map[[2]string]*template)
	}
	if len(templates.m) < maxTemplates {
		templates.m[key] = t
	}
	return t
}

// render fills g.page with page number n.
func (g *generator) render(n int64) {
	copy(g.page, g.template)
	first := n * pageLines
	for i := range int64(pageLines) {
		digits := g.page[i*g.width+int64(g.numberAt):][:lineNumberDigits]
		v := first + i + 1
		for d := lineNumberDigits - 1; d >= 0; d-- {
			digits[d] = byte('0' + v%10)
			v /= 10
		}
	}
	g.pageIndex = n
}

// ReadAt implements io.ReaderAt over the generated log.
func (g *generator) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	n := 0
	pageBytes := int64(len(g.template))
	for n < len(p) {
		if off >= g.size {
			return n, io.EOF
		}
		if pi := off / pageBytes; pi != g.pageIndex {
			g.render(pi)
		}
		chunk := g.page[off%pageBytes:]
		if rest := g.size - off; int64(len(chunk)) > rest {
			chunk = chunk[:rest]
		}
		m := copy(p[n:], chunk)
		n += m
		off += int64(m)
	}
	return n, nil
}

// Generate returns the first size bytes of the log that the simulated
// upstream generates for a task at a level ("INFO" or "DEBUG"). Tests use it
// to compare what they received with what was sent.
func Generate(size int64, level, taskName string) []byte {
	b, err := io.ReadAll(Reader(size, level, taskName))
	if err != nil {
		panic(err) // generation cannot fail
	}
	return b
}

// Reader returns the log that the simulated upstream generates for a task
// at a level, as a stream: for comparing logs too large to hold.
func Reader(size int64, level, taskName string) io.Reader {
	return io.NewSectionReader(newGenerator(size, level, taskName), 0, size)
}
