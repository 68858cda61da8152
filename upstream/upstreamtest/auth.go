package upstreamtest

import (
	"crypto/hmac"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/buildlog/buildlog/upstream"
)

// iamTokensPath is the IAM password-grant route the server also answers, so
// one simulated server plays both the CodeArts API and IAM.
const iamTokensPath = "/v3/auth/tokens"

// DefaultIAMTokenTTL is the lifetime of the tokens the fake IAM issues, as
// the real one's.
const DefaultIAMTokenTTL = 24 * time.Hour

// maxSigningSkew is how far X-Sdk-Date may be from the server's clock, as
// API gateways allow.
const maxSigningSkew = 15 * time.Minute

// IAMUser is an account of the fake IAM: the password grant for Domain,
// Name and Password scoped to ProjectID issues a token.
type IAMUser struct {
	Domain, Name, Password, ProjectID string
}

// authState is what the server knows about credentials other than the
// fixed tokens of AddToken. Guarded by Server.mu.
type authState struct {
	keys      map[string]string    // access key → secret key
	users     []IAMUser            // fake IAM accounts
	issued    map[string]time.Time // IAM tokens issued → expiry
	ttl       time.Duration
	now       func() time.Time
	iamStatus int           // when not 0, IAM answers this status (an outage)
	iamGate   chan struct{} // when not nil, IAM waits for it to close
	iamCount  int
}

func (a *authState) clock() time.Time {
	if a.now == nil {
		return time.Now()
	}
	return a.now()
}

// AddAKSK makes the server accept requests signed (SDK-HMAC-SHA256) with
// the access key ak and secret key sk. It verifies a signature by signing
// the request it received again with [upstream.SignRequest], which signs
// as the official SDK's signer does.
func (s *Server) AddAKSK(ak, sk string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.auth.keys == nil {
		s.auth.keys = map[string]string{}
	}
	s.auth.keys[ak] = sk
}

// AddIAMUser adds an account to the fake IAM. Tokens it issues are accepted
// as X-Auth-Token until they expire.
func (s *Server) AddIAMUser(u IAMUser) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth.users = append(s.auth.users, u)
}

// SetIAMTokenTTL sets the lifetime of tokens issued from now on; default
// [DefaultIAMTokenTTL].
func (s *Server) SetIAMTokenTTL(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth.ttl = d
}

// SetClock sets the clock that token expiry and signature dates are
// checked against; default time.Now.
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth.now = now
}

// FailIAM makes the fake IAM answer every token request with status, as in
// an outage; 0 ends the outage.
func (s *Server) FailIAM(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth.iamStatus = status
}

// HoldIAM makes token requests wait until release is called.
func (s *Server) HoldIAM() (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.auth.iamGate = gate
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.auth.iamGate == gate {
			s.auth.iamGate = nil
		}
		s.mu.Unlock()
		close(gate)
	}
}

// RevokeIAMTokens makes every token the fake IAM issued so far invalid, as
// when the user's password changes.
func (s *Server) RevokeIAMTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.auth.issued)
}

// IAMRequestCount returns how many token requests the fake IAM received.
// They are not counted by RequestCount.
func (s *Server) IAMRequestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auth.iamCount
}

// access returns 0 when r's credentials may read recordID, else the
// status refusing them: 401 for unknown ones, 403 for a token restricted
// to other records. The caller holds s.mu.
func (s *Server) access(r *http.Request, recordID string) int {
	if !s.authorized(r) {
		return http.StatusUnauthorized
	}
	if allowed, ok := s.restricted[r.Header.Get("X-Auth-Token")]; ok && !allowed[recordID] {
		return http.StatusForbidden
	}
	return 0
}

// authorized reports whether r carries a known or unexpired IAM token, or a
// valid signature. The caller holds s.mu.
func (s *Server) authorized(r *http.Request) bool {
	if token := r.Header.Get("X-Auth-Token"); token != "" {
		if s.tokens[token] {
			return true
		}
		expiry, ok := s.auth.issued[token]
		return ok && s.auth.clock().Before(expiry)
	}
	return s.validSignature(r)
}

// validSignature checks an SDK-HMAC-SHA256 Authorization header: the access
// key is known, X-Sdk-Date is signed and recent, and signing the request
// again with the secret key gives the same header. The caller holds s.mu.
func (s *Server) validSignature(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "SDK-HMAC-SHA256 ")
	if !ok {
		return false
	}
	params := map[string]string{}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		params[k] = v
	}
	sk, ok := s.auth.keys[params["Access"]]
	signed := strings.Split(params["SignedHeaders"], ";")
	if !ok || !containsFold(signed, upstream.SigningDateHeader) {
		return false
	}
	date, err := time.Parse(upstream.SigningDateFormat, r.Header.Get(upstream.SigningDateHeader))
	if skew := s.auth.clock().Sub(date).Abs(); err != nil || skew > maxSigningSkew {
		return false
	}
	want := upstream.SignRequest(r, params["Access"], sk, signed, date)
	return hmac.Equal([]byte(want), []byte(auth))
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// serveIAM answers POST /v3/auth/tokens as IAM does: 201 with the token in
// X-Subject-Token and token.expires_at in the body.
func (s *Server) serveIAM(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.auth.iamCount++
	gate := s.auth.iamGate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	var req struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string `json:"name"`
						Password string `json:"password"`
						Domain   struct {
							Name string `json:"name"`
						} `json:"domain"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					ID string `json:"id"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	if r.Method != http.MethodPost {
		writeIAMError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeIAMError(w, http.StatusBadRequest, "The request body is invalid.")
		return
	}
	u := req.Auth.Identity.Password.User
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.auth.iamStatus != 0 {
		writeIAMError(w, s.auth.iamStatus, http.StatusText(s.auth.iamStatus))
		return
	}
	known := false
	for _, a := range s.auth.users {
		known = known || (a.Domain == u.Domain.Name && a.Name == u.Name && a.Password == u.Password && a.ProjectID == req.Auth.Scope.Project.ID)
	}
	if !known {
		writeIAMError(w, http.StatusUnauthorized, "The username or password is wrong.")
		return
	}
	token := "MIIE" + newRequestID() + newRequestID()
	expiry := s.auth.clock().Add(DefaultIAMTokenTTL)
	if s.auth.ttl > 0 {
		expiry = s.auth.clock().Add(s.auth.ttl)
	}
	if s.auth.issued == nil {
		s.auth.issued = map[string]time.Time{}
	}
	s.auth.issued[token] = expiry
	w.Header().Set("X-Subject-Token", token)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": map[string]any{
		"expires_at": expiry.UTC().Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  s.auth.clock().UTC().Format("2006-01-02T15:04:05.000000Z"),
		"methods":    []string{"password"},
		"project":    map[string]string{"id": req.Auth.Scope.Project.ID},
	}})
}

func writeIAMError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": status, "message": msg}})
}
