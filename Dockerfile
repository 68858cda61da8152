# buildlogd in a small, non-root image:
#   docker build -t buildlog:dev .
#   docker run --rm -p 9090:9090 -p 8080:8080 -p 9091:9091 buildlog:dev --demo
# The build stage compiles a static binary (CGO_ENABLED=0); the final stage
# is distroless "static" (CA certificates, tzdata, /etc/passwd, no shell)
# running as its nonroot user, uid 65532.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/buildlogd ./cmd/buildlogd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/buildlogd /usr/local/bin/buildlogd
USER 65532:65532
# gRPC, REST mirror, admin (/healthz, /readyz, /metrics): buildlogd's defaults.
EXPOSE 9090 8080 9091
ENTRYPOINT ["/usr/local/bin/buildlogd"]
