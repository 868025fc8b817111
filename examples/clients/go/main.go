// A Go client of llmserve.v1.Gateway: health, ListModels, a streamed greedy Generate, then a
// chat session with one streamed turn. Prints one JSON object (stdout); exits 1 with the
// failing call's status otherwise. Build steps: README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	llmservev1 "github.com/llmserve/llmserve/gen/go/llmserve/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

type reply struct {
	Text         string   `json:"text"`
	TokenIDs     []uint32 `json:"token_ids"`
	FinishReason string   `json:"finish_reason"`
}

// chunk is what Generate and Chat stream.
type chunk interface {
	GetText() string
	GetTokenIds() []uint32
	GetFinishReason() llmservev1.FinishReason
}

func collect[T chunk](recv func() (T, error)) (reply, error) {
	r := reply{TokenIDs: []uint32{}}
	for {
		c, err := recv()
		if errors.Is(err, io.EOF) {
			return r, nil
		}
		if err != nil {
			return r, err
		}
		r.Text += c.GetText()
		r.TokenIDs = append(r.TokenIDs, c.GetTokenIds()...)
		if c.GetFinishReason() != llmservev1.FinishReason_FINISH_REASON_UNSPECIFIED {
			r.FinishReason = c.GetFinishReason().String()
		}
	}
}

func run() error {
	address := flag.String("gateway", "127.0.0.1:50051", "gateway HOST:PORT")
	prompt := flag.String("prompt", "The capital of France is", "prompt")
	model := flag.String("model", "", "model (default: the first one served)")
	maxTokens := flag.Int("max-tokens", 16, "most tokens of each reply")
	ca := flag.String("ca", "", "PEM CA of the gateway's certificate: connect with TLS")
	flag.Parse()
	key := os.Getenv("LLMSERVE_API_KEY")
	if key == "" {
		return errors.New("set LLMSERVE_API_KEY to a key of the gateway's keys file")
	}
	creds := insecure.NewCredentials()
	if *ca != "" {
		tls, err := credentials.NewClientTLSFromFile(*ca, "")
		if err != nil {
			return err
		}
		creds = tls
	}
	conn, err := grpc.NewClient(*address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := map[string]any{}

	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	out["health"] = health.GetStatus().String()

	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	gateway := llmservev1.NewGatewayClient(conn)
	models, err := gateway.ListModels(ctx, &llmservev1.ListModelsRequest{})
	if err != nil {
		return err
	}
	names := []string{}
	for _, m := range models.GetModels() {
		names = append(names, m.GetName())
		if *model == "" && m.GetNumHealthyRuntimes() > 0 {
			*model = m.GetName()
		}
	}
	out["models"] = names
	if *model == "" {
		return errors.New("the gateway serves no model with a healthy runtime yet")
	}
	out["model"] = *model

	temperature, tokens := float32(0), int32(*maxTokens) // greedy: the same tokens from any client
	sampling := &llmservev1.SamplingParams{Temperature: &temperature, MaxTokens: &tokens}
	stream, err := gateway.Generate(ctx, &llmservev1.GatewayGenerateRequest{
		Model:    *model,
		Prompt:   &llmservev1.Prompt{Kind: &llmservev1.Prompt_Text{Text: *prompt}},
		Sampling: sampling,
	})
	if err != nil {
		return err
	}
	if out["generate"], err = collect(stream.Recv); err != nil {
		return err
	}

	session, err := gateway.CreateSession(ctx, &llmservev1.CreateSessionRequest{Model: *model})
	if err != nil {
		return err
	}
	id := session.GetSession().GetSessionId()
	out["session_id"] = id
	chat, err := gateway.Chat(ctx, &llmservev1.ChatRequest{SessionId: id, Message: *prompt, Sampling: sampling})
	if err != nil {
		return err
	}
	if out["chat"], err = collect(chat.Recv); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "llmserve client failed: %v\n", err)
		os.Exit(1)
	}
}
