import { act, cleanup, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { StreamRecovery, rememberSession } from "../src/index.js";
import type { RecoveryClient } from "../src/index.js";
import { FakeRecent } from "./fakes.js";

afterEach(cleanup);

const A = "A".repeat(21);
const B = "B".repeat(21);

function setup(active: string | null = null) {
  const recent = new FakeRecent();
  recent.add({ sessionId: A, title: "first question", createdAt: "2026-11-25T10:00:00Z", status: "completed" });
  recent.add({ sessionId: B, title: "second question", createdAt: "2026-11-25T10:01:00Z", status: "running" });
  const client: RecoveryClient = {
    status: vi.fn(async () => ({ status: "running" })),
    stop: vi.fn(async () => ({ status: "cancelled" })),
  };
  const onResume = vi.fn();
  render(
    <StreamRecovery
      recent={recent.asRecent()}
      client={client}
      onResume={onResume}
      activeSessionId={active}
      shareUrl={(s) => `https://chat.example/?session=${s.sessionId}`}
      data-testid="recent"
    />,
  );
  return { recent, client, onResume };
}

describe("<StreamRecovery/>", () => {
  it("lists the sessions newest first with their status and labelled controls", () => {
    setup();
    const region = screen.getByRole("region", { name: "Recent sessions" });
    const items = within(region).getAllByRole("listitem");
    expect(items.map((li) => li.getAttribute("data-session-id"))).toEqual([B, A]);
    expect(within(items[0]).getByLabelText("Status: running")).toBeTruthy();
    expect(within(items[1]).getByLabelText("Status: completed")).toBeTruthy();
    const link = within(items[0]).getByRole("link", { name: "Share link to “second question”" });
    expect(link.getAttribute("href")).toBe(`https://chat.example/?session=${B}`);
    // A finished session cannot be stopped.
    expect(within(items[1]).getByRole("button", { name: "Stop “first question”" })).toHaveProperty(
      "disabled",
      true,
    );
  });

  it("resumes the chosen session from the keyboard", async () => {
    const { onResume } = setup();
    const button = screen.getByRole("button", { name: "Resume “first question”" });
    button.focus();
    expect(document.activeElement).toBe(button);
    act(() => button.click()); // Enter or Space on a focused <button> is a click
    expect(onResume).toHaveBeenCalledWith(expect.objectContaining({ sessionId: A }));
  });

  it("disables resuming the session on screen", () => {
    setup(B);
    expect(screen.getByRole("button", { name: "Resume “second question”" })).toHaveProperty(
      "disabled",
      true,
    );
  });

  it("stops a live session and shows its new status", async () => {
    const { client } = setup(B);
    await act(async () => {
      screen.getByRole("button", { name: "Stop “second question”" }).click();
    });
    expect(client.stop).toHaveBeenCalledWith(B);
    await waitFor(() => expect(screen.getByLabelText("Status: cancelled")).toBeTruthy());
    expect(screen.getByRole("status").textContent).toContain("Stopped");
  });

  it("asks the API for the status of a session remembered as live", async () => {
    const { client } = setup();
    await waitFor(() => expect(client.status).toHaveBeenCalledWith(B));
    expect(client.status).toHaveBeenCalledTimes(1);
  });

  it("copies the share link", async () => {
    const writeText = vi.fn(async () => {});
    Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
    setup();
    await act(async () => {
      screen.getByRole("button", { name: "Copy the share link to “first question”" }).click();
    });
    expect(writeText).toHaveBeenCalledWith(`https://chat.example/?session=${A}`);
    expect(screen.getByRole("status").textContent).toContain("copied");
  });

  it("links to this page with the session, and its stream token in the fragment", () => {
    const recent = new FakeRecent();
    recent.add({ sessionId: A, title: "open", createdAt: "2026-11-25T10:00:00Z", status: "completed" });
    recent.add({ sessionId: B, title: "keyed", createdAt: "2026-11-25T10:01:00Z", status: "completed", token: "t/1" });
    window.history.replaceState(null, "", "/chat?session=old#token=old");
    render(<StreamRecovery recent={recent.asRecent()} onResume={() => {}} />);
    const href = (name: string) => screen.getByRole("link", { name }).getAttribute("href");
    expect(href("Share link to “open”")).toBe(`${location.origin}/chat?session=${A}`);
    expect(href("Share link to “keyed”")).toBe(`${location.origin}/chat?session=${B}#token=t%2F1`);
  });

  it("shows sessions added after it rendered", () => {
    const { recent } = setup();
    act(() =>
      rememberSession(recent.asRecent(), {
        sessionId: "C".repeat(21),
        title: "third",
        createdAt: "2026-11-25T10:02:00Z",
      }),
    );
    expect(screen.getAllByRole("listitem")).toHaveLength(3);
  });
});
